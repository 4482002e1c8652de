"""Probe batches as users have them (issue #21 item 6): dict batches, NumPy arrays, a float64
batch into a float32 model, targets of the wrong length; `top_k` against N·C and the probe-cost
warning, checked against the sizes that define them (the NTK of a linear model is exact)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim.monitor import CosmologyTracker, MonitorConfig
from cosmo_optim.monitor.batches import batch_size, take_probe_batch
from cosmo_optim.monitor.checks import cost_warning, probe_cost_steps


def test_take_probe_batch_copies_the_first_samples():
    x, y = torch.randn(10, 2), torch.randn(10)
    inputs, targets = take_probe_batch((x, y), 4)
    (first,) = inputs.args  # one positional argument, as the model takes the batch
    assert torch.equal(first, x[:4]) and torch.equal(targets, y[:4]) and len(inputs) == 4
    first[0, 0] = 99.0
    assert x[0, 0] != 99.0
    assert take_probe_batch((x, torch.tensor(3.0)), 4)[1] is None  # a scalar: not targets
    with pytest.raises(ValueError, match=r"inputs of shape \(0, 2\) are empty"):
        take_probe_batch(torch.zeros(0, 2), 4)


def test_targets_of_the_wrong_length_are_an_error_naming_both_lengths():
    with pytest.raises(ValueError, match=r"7 targets for 10 inputs .*Fix: pass probe_batch"):
        take_probe_batch((torch.randn(10, 2), torch.randn(7)), 4)
    with pytest.raises(ValueError, match=r"7 'y' for 10 'x' rows .*Fix: one row of 'y'"):
        take_probe_batch({"x": torch.randn(10, 2), "y": torch.randn(7)}, 4)


def test_a_collator_s_dict_goes_to_the_model_as_keyword_arguments_without_the_labels():
    """keywords=True (the Hugging Face callback): every per-sample tensor but the targets is a
    keyword argument; a tensor of another length is left out."""
    ids, mask = torch.arange(12).reshape(6, 2), torch.ones(6, 2, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(6),
             "pad": torch.zeros(3)}
    inputs, targets = take_probe_batch(batch, 4, input_key="input_ids", label_key="labels",
                                       keywords=True)
    assert inputs.args == () and sorted(inputs.kwargs) == ["attention_mask", "input_ids"]
    assert torch.equal(inputs.kwargs["input_ids"], ids[:4]) and torch.equal(targets,
                                                                            torch.arange(4))
    seen = {}
    inputs.call(lambda **kw: seen.update(kw))
    assert torch.equal(seen["attention_mask"], mask[:4])


def test_dict_batches_by_the_default_keys_and_by_input_key_and_label_key():
    x, y, w = torch.randn(6, 3), torch.arange(6), torch.randn(6, 3)
    for batch in ({"x": x, "y": y}, {"inputs": x, "labels": y, "mask": w},
                  {"input_ids": x, "label": y}):
        inputs, targets = take_probe_batch(batch, 4)
        assert torch.equal(inputs.args[0], x[:4]) and torch.equal(targets, y[:4]), sorted(batch)
    inputs, targets = take_probe_batch({"image": w, "signal": x, "class": y}, 4,
                                       input_key="signal", label_key="class")
    assert torch.equal(inputs.args[0], x[:4]) and torch.equal(targets, y[:4])
    assert take_probe_batch({"x": x}, 4)[1] is None
    assert batch_size({"features": x, "y": y}) == 6


@pytest.mark.parametrize(("batch", "kwargs", "match"), [
    ({"signal": torch.randn(4, 2)}, {}, r"keys \['signal'\]: none of the default input keys"
                                        r".*Fix: pass input_key="),
    ({"x": torch.randn(4, 2)}, {"input_key": "pixels"}, r"no key 'pixels'.*Fix: pass input_key"),
    ({"x": torch.randn(4, 2)}, {"label_key": "cls"}, r"Invalid label_key: 'cls' is not a key"),
])
def test_a_dict_batch_without_the_keys_names_its_keys_and_the_fix(batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        take_probe_batch(batch, 4, **kwargs)


def test_tuples_of_numpy_arrays_become_tensors():
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.arange(6)
    inputs, targets = take_probe_batch((x, y), 4)
    assert torch.equal(inputs.args[0], torch.from_numpy(x[:4])) and torch.equal(
        targets, torch.from_numpy(y[:4]))
    inputs.args[0][0, 0] = -1.0
    assert x[0, 0] == 0.0  # copied


def test_a_float64_numpy_probe_batch_probes_a_float32_model():
    """The probe batch is cast to the model's dtype: the NTK of f = w·x + b is x xᵀ + 1."""
    g = np.random.default_rng(0)
    x, y = g.standard_normal((6, 3)), g.standard_normal((6, 1))
    model = nn.Linear(3, 1)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch={"x": x, "y": y}, top_k=2,
                               every_n_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dtype warning either
        scalars = tracker.read(0)
    assert scalars is not None
    x32 = torch.from_numpy(x).float().double()
    lam = torch.linalg.eigvalsh(x32 @ x32.T + 1.0).flip(0)
    assert scalars["ntk/lambda_1"] == pytest.approx(float(lam[0]), rel=1e-5)
    assert next(model.parameters()).dtype == torch.float32  # the model is as it was


def _first_probe_warnings(**kwargs):
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    model = nn.Linear(3, 2).double()
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), every_n_steps=10,
                               **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.read(0)
        tracker.read(10)
    return [str(w.message) for w in caught], tracker


def test_top_k_above_n_c_warns_once_naming_the_value_n_c_and_the_fix():
    messages, tracker = _first_probe_warnings(top_k=1000, probe_size=8)
    assert len(messages) == 1, messages
    assert "top_k=1000 exceeds N·C = 8·2 = 16" in messages[0] and "Fix: top_k=16" in messages[0]
    assert sum(t.startswith("modes/amplitude_") for t in tracker.history[-1].scalars) == 16
    assert _first_probe_warnings(top_k=16)[0] == []


def test_the_cost_warning_says_by_how_much_a_probe_exceeds_a_training_step_and_the_fix():
    assert probe_cost_steps(1000, 10, 32) == pytest.approx(312.5)
    config = MonitorConfig(probe_size=1000, every_n_steps=50, interval_name="every_n_train_steps")
    message = cost_warning(config, 1000, 10, 32)
    assert message is not None and "\n" not in message
    assert "≈ 312 training steps" in message and "N·C = 1000·10 = 10000" in message
    assert "≥ 6.2× the training time at every_n_train_steps=50" in message
    assert "Fix: probe_size=160" in message and "every_n_train_steps=3125" in message
    assert cost_warning(config, 16, 10, 32) is None  # the default: ≈ 5 steps' worth
    messages, _ = _first_probe_warnings(top_k=2, train_batch_size=1, probe_size=8)
    assert messages == []  # 8·2/1 = 16 steps: no warning
    config = MonitorConfig(top_k=2, every_n_steps=10, train_batch_size=1)
    assert cost_warning(config, 64, 2, 1) is not None  # 128 steps


def test_the_tracker_warns_about_the_cost_once_at_the_first_probe():
    x, y = torch.randn(60, 3, dtype=torch.float64), torch.randn(60, 1, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2,
                               probe_size=60, every_n_steps=10, train_batch_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.read(0)
        tracker.read(10)
    cost = [str(w.message) for w in caught if "training steps" in str(w.message)]
    assert len(cost) == 1 and "≈ 60 training steps" in cost[0], cost
