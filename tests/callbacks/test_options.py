"""Every `MonitorConfig` option is an argument of every adaptor, and `group=` (the advice of
the param-group warning) is followed: the universe is read from that group (T3)."""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cosmo_optim import Cosmology
from cosmo_optim.monitor import MonitorConfig

#: set by the adaptor from the framework (DDP, its batch size) or internal (error wording)
FROM_FRAMEWORK = {"distributed", "interval_name", "train_batch_size"}
#: the adaptor's spelling of a field, where it follows its framework's name
ALIASES = {"lightning": {"every_n_steps": "every_n_train_steps"}, "huggingface": {}}


def _adaptor(name):
    if name == "lightning":
        pytest.importorskip("lightning.pytorch")
        from cosmo_optim.callbacks import CosmologyMonitor as adaptor
    else:
        pytest.importorskip("transformers")
        from cosmo_optim.callbacks import CosmologyCallback as adaptor
    return adaptor


@pytest.mark.parametrize("name", ["lightning", "huggingface"])
def test_each_adaptor_takes_every_monitor_config_option(name):
    adaptor = _adaptor(name)
    params = set(inspect.signature(adaptor.__init__).parameters)
    fields = {f.name for f in dataclasses.fields(MonitorConfig)} - FROM_FRAMEWORK
    missing = {ALIASES[name].get(f, f) for f in fields} - params
    assert not missing, f"{adaptor.__name__} lacks {sorted(missing)}"
    extra = {}
    if name == "huggingface":  # the Trainer it is added to
        import transformers

        extra["trainer"] = transformers.Trainer(model=nn.Linear(2, 1), args=transformers.TrainingArguments(
            "unused", use_cpu=True, report_to=[]))
    assert adaptor(nn.MSELoss(), group=1, history_size=7, **extra).config.group == 1


@pytest.mark.parametrize("name", ["lightning", "huggingface"])
def test_group_is_validated_like_the_tracker_s(name):
    with pytest.raises(ValueError, match=r"Invalid group: 'x'; it must be the integer index"):
        _adaptor(name)(group="x")


def test_lightning_monitor_with_group_1_reads_that_group_s_universe(tmp_path, regression_module):
    L = pytest.importorskip("lightning.pytorch")
    from cosmo_optim.callbacks import CosmologyMonitor

    def configure(self):
        return torch.optim.SGD([{"params": self.net[0].parameters()},
                                {"params": self.net[2].parameters(), "lr": 0.02}],
                               lr=0.1, momentum=0.9)

    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=1, group=1)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", callbacks=[monitor],
                        logger=L.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(regression_module(configure), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    assert any("read from group 1 only" in str(w.message) for w in caught)
    assert monitor.tracker is not None
    hubble = monitor.tracker.history[-1].scalars["cosmology/hubble_rate"]
    assert hubble == pytest.approx(Cosmology(0.02, 0.9).hubble_rate, rel=1e-12)
