"""`MonitorConfig`: every option validated once, with the message naming the fix."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from cosmo_optim.losses import PerSampleLoss
from cosmo_optim.monitor import MonitorConfig


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, r"Invalid top_k: 0; it must be an integer ≥ 1"),
        ({"probe_size": 2.5}, r"Invalid probe_size: 2.5"),
        ({"every_n_steps": 0}, r"Invalid every_n_steps: 0"),
        ({"every_n_steps": 0, "interval_name": "every_n_train_steps"}, r"Invalid every_n_train_steps: 0"),
        ({"history_size": True}, r"Invalid history_size: True"),
        ({"prefix": 1}, r"Invalid prefix: 1; it must be a string"),
        ({"group": "0"}, r"Invalid group: '0'; it must be the integer index"),
        ({"every_n_steps": 4, "log_figures_every_n_steps": 6}, r"multiple of every_n_steps=4 .*Fix: use log_figures_every_n_steps=8"),
        ({"loss": "mse"}, r"Invalid loss"),
    ],
)
def test_invalid_options_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MonitorConfig(**kwargs)


def test_open_interval_is_checked_when_the_trainer_closes_it():
    config = MonitorConfig(nn.MSELoss(), every_n_steps=None, log_figures_every_n_steps=6)
    assert isinstance(config.loss, PerSampleLoss)
    with pytest.raises(RuntimeError, match="interval is not set"):
        config.interval  # noqa: B018
    assert config.with_interval(3).interval == 3
    with pytest.raises(ValueError, match=r"multiple of every_n_steps=4"):
        config.with_interval(4)


def test_key_changes_with_the_options_that_define_a_monitor():
    assert MonitorConfig(top_k=3).key() != MonitorConfig(top_k=4).key()
    assert MonitorConfig(prefix="a/").key() != MonitorConfig().key()
    assert MonitorConfig().key() == MonitorConfig().key()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ntk_method": "fast"}, r"Invalid ntk_method: 'fast'; it must be one of \['exact'\]"),
        ({"distributed": 1}, r"Invalid distributed: 1; it must be True or False"),
    ],
)
def test_invalid_kernel_options_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MonitorConfig(**kwargs)


def test_state_key_leaves_out_the_kernel_options():
    """A run resumed with another kernel keeps its e-folds and history (the tracker starts a
    new reference instead); checkpoints from before the options existed still restore."""
    with pytest.warns(DeprecationWarning):
        assert MonitorConfig(ntk_method="sketch", sketch_dim=8).key() == MonitorConfig().key()


@pytest.mark.parametrize("former", ["fit", "auto", "sketch"])
def test_former_ntk_methods_read_the_exact_kernel_with_one_deprecation_warning(former):
    """The monitor reads the full N·C kernel, which the sketch (random combinations of the
    output components) does not estimate: every former value means "exact", and says so."""
    assert MonitorConfig().ntk_method == "exact"
    with pytest.warns(DeprecationWarning, match=rf"ntk_method='{former}' is deprecated: a monitor reads the exact kernel.*Fix: drop ntk_method") as caught:
        config = MonitorConfig(ntk_method=former, every_n_steps=None)
        config = config.with_interval(5)  # validated again, not warned again
    assert config.ntk_method == "exact" and len(caught) == 1
    assert config == MonitorConfig(every_n_steps=5)


def test_sketch_dim_is_deprecated_and_dropped():
    with pytest.warns(DeprecationWarning, match=r"sketch_dim=16 is deprecated and dropped.*Fix: drop sketch_dim"):
        config = MonitorConfig(sketch_dim=16)
    assert config.sketch_dim is None


def test_numpy_integers_are_counts_and_are_stored_as_ints():
    """A count from a NumPy computation (np.int64) is an integer: accepted, kept as an int
    (checkpoint keys and JSON states hold plain ints); a float or a bool is still refused."""
    config = MonitorConfig(probe_size=np.int64(8), every_n_steps=np.int32(5), top_k=np.int16(2))
    assert (config.probe_size, config.every_n_steps, config.top_k) == (8, 5, 2)
    assert all(type(v) is int for v in (config.probe_size, config.every_n_steps, config.top_k))
    for bad in (8.0, True, np.float64(8)):
        with pytest.raises(ValueError, match=r"Invalid probe_size: .*integer ≥ 1"):
            MonitorConfig(probe_size=bad)
