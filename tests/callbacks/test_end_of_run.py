"""Both callbacks' end of a run (issue #32 item 7): `summary()` returns the run's summary as
data and the table is logged on the console logger."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn


@pytest.mark.parametrize("kind", ["lightning", "huggingface"])
def test_both_callbacks_return_the_summary_and_log_its_table(tmp_path, kind, caplog,
                                                             regression_module):
    with caplog.at_level(logging.INFO, logger="cosmo_optim.monitor.console"):
        if kind == "lightning":
            summary = _lightning(tmp_path, regression_module)
        else:
            summary = _huggingface(tmp_path)
    assert summary.readings == 3 and summary.tested == 2
    assert "cosmo-optim: the run's dual, 3 readings" in caplog.text


def _lightning(tmp_path, regression_module):
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from cosmo_optim.callbacks import CosmologyMonitor

    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=2)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=CSVLogger(tmp_path),
                        callbacks=[monitor], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(regression_module(lambda m: torch.optim.SGD(m.parameters(), lr=0.05,
                                                            momentum=0.9)),
                DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    return monitor.summary()


def _huggingface(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from cosmo_optim.callbacks import CosmologyCallback

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, labels=None):
            logits = self.net(x)
            if labels is None:
                return {"logits": logits}
            return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    g = torch.Generator().manual_seed(0)
    data = [{"x": x, "labels": y} for x, y in zip(torch.randn(32, 4, generator=g),
                                                   torch.randint(0, 3, (32,), generator=g),
                                                   strict=True)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, logging_steps=2, per_device_train_batch_size=8,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    net = Classifier()
    trainer = transformers.Trainer(model=net, args=args, train_dataset=data, optimizers=(
        torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), None))
    callback = CosmologyCallback(input_key="x", top_k=2, trainer=trainer)
    trainer.add_callback(callback)
    trainer.train()
    return callback.summary()
