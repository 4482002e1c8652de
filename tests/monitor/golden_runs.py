"""The golden runs of the monitor (issue #13 item 6): fixed seeds, every logged value recorded.

`record_all()` runs a plain PyTorch loop with `CosmologyTracker` (a regressor with SGD, a
classifier with CosmoSGD + a scheduler, an Adam run) and a Lightning run with
`CosmologyMonitor`, capturing every scalar, histogram, layout, figure tag and hyperparameter
the monitor writes. ``python tests/monitor/golden_runs.py`` rewrites ``golden.json``; it was
generated BEFORE the monitor was split into a package and again for issue #28 (see
`test_golden.py`), which checks that later refactors still write exactly those values.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

GOLDEN = Path(__file__).with_name("golden.json")


def _number(value: Any) -> Any:
    value = float(value)
    return repr(value) if not math.isfinite(value) else value


class RecordingWriter:
    """A duck-typed ``SummaryWriter`` that keeps everything written to it."""

    def __init__(self) -> None:
        self.events: list[list[Any]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.events.append(["scalar", tag, int(step), _number(value)])

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.events.append(["histogram", tag, int(step), [_number(v) for v in values.tolist()]])

    def add_custom_scalars(self, layout: dict[str, Any]) -> None:
        self.events.append(["layout", json.loads(json.dumps(layout))])

    def add_figure(self, tag: str, figure: Any, step: int, close: bool = True) -> None:
        self.events.append(["figure", tag, int(step)])


def _plain_regressor() -> list[list[Any]]:
    from cosmo_optim.monitor import CosmologyTracker

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    writer = RecordingWriter()
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), probe_size=8, top_k=3,
                               every_n_steps=3, log_figures_every_n_steps=6, sink=writer)
    tracker.attach(opt)
    for _ in range(13):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    tracker.close()
    return writer.events


def _plain_classifier() -> list[list[Any]]:
    from cosmo_optim import CosmoSGD
    from cosmo_optim.monitor import CosmologyTracker

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    opt = CosmoSGD(model.parameters(), vacuum_energy=2.0, time_step=0.2)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    writer = RecordingWriter()
    tracker = CosmologyTracker(model, nn.CrossEntropyLoss(), probe_batch=(x, y), probe_size=6,
                               top_k=4, every_n_steps=2, prefix="train/", sink=writer)
    tracker.attach(opt)
    for _ in range(9):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        scheduler.step()
    tracker.close()
    return writer.events


def _plain_adam() -> list[list[Any]]:
    from cosmo_optim.monitor import CosmologyTracker

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(6, 2), torch.randn(6, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    writer = RecordingWriter()
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2,
                               every_n_steps=4, sink=writer)
    tracker.attach(opt)
    for _ in range(8):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    tracker.close()
    return writer.events


def _lightning() -> list[list[Any]]:
    import lightning.pytorch as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    from cosmo_optim import CosmoSGD
    from cosmo_optim.callbacks import CosmologyMonitor

    writer = RecordingWriter()

    class Recorder(TensorBoardLogger):
        @property
        def experiment(self) -> Any:
            return writer

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            params = dict(params)
            writer.events.append(["hparams", {k: params[k] for k in sorted(params)}])

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            for tag in sorted(metrics):
                if tag != "epoch":
                    writer.add_scalar(tag, metrics[tag], step or 0)

        def save(self) -> None:
            pass

        def finalize(self, status: str) -> None:
            pass

    class Regressor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self) -> Any:
            return CosmoSGD(self.parameters(), vacuum_energy=3.0, time_step=0.1)

    torch.manual_seed(3)
    x = torch.randn(40, 3)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=8)
    model = Regressor()
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=3, probe_size=8,
                               log_figures_every_n_steps=4)
    trainer = L.Trainer(
        max_steps=9, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        logger=Recorder("unused", name="", version=0), callbacks=[monitor],
        log_every_n_steps=1000,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        trainer.fit(model, loader)
        del root
    return writer.events


RUNS = {
    "plain_regressor": _plain_regressor,
    "plain_classifier": _plain_classifier,
    "plain_adam": _plain_adam,
    "lightning": _lightning,
}


def record(name: str) -> list[list[Any]]:
    """One golden run's events on one intra-op thread (float sums in a fixed order)."""
    import warnings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return json.loads(json.dumps(RUNS[name]()))
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    GOLDEN.write_text(json.dumps({name: record(name) for name in RUNS}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
