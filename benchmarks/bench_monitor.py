"""Wall-time overhead of `CosmologyMonitor` at its default settings.

An MLP classifier (64 → 512 → 512 → 10, CosmoSGD) trains on scikit-learn's bundled digits
(1797 images, batch 32, 57 optimiser steps per epoch) for a few epochs with a TensorBoard
logger, once without and once with the monitor, alternating within one process so that machine
noise hits both alike. Prints the median of the per-pair time ratios (target ≤ 1.10).

    python benchmarks/bench_monitor.py            # the real measurement
    python benchmarks/bench_monitor.py --smoke    # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cosmo_optim import CosmoSGD
from cosmo_optim.callbacks import CosmologyMonitor


class DigitsMLP(L.LightningModule):
    """An ordinary classifier: nothing in it knows about the monitor."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return CosmoSGD(self.parameters(), vacuum_energy=1.0, time_step=0.1)


def digits(batch_size: int = 32) -> DataLoader:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(x, torch.tensor(y)), batch_size=batch_size, shuffle=True,
                      generator=g)


def fit(epochs: int, monitor: bool, log_dir: str, max_steps: int = -1, hidden: int = 512) -> float:
    L.seed_everything(0, verbose=False)
    model, data = DigitsMLP(hidden), digits()
    callbacks = [CosmologyMonitor(model.loss)] if monitor else []
    trainer = L.Trainer(
        max_epochs=epochs, max_steps=max_steps, accelerator="cpu", devices=1,
        logger=TensorBoardLogger(log_dir, name="monitor" if monitor else "plain"),
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start


def run(epochs: int, repeats: int, max_steps: int = -1, hidden: int = 512) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as log_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(1, True, log_dir, max_steps=5)  # warm-up: imports, first eigh, matplotlib
        ratios, plain, watched = [], [], []
        for _ in range(repeats):
            a = fit(epochs, False, log_dir, max_steps, hidden)
            b = fit(epochs, True, log_dir, max_steps, hidden)
            plain.append(a)
            watched.append(b)
            ratios.append(b / a)
    return {
        "ratio": statistics.median(ratios),
        "plain_s": statistics.median(plain),
        "monitor_s": statistics.median(watched),
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512, help="width of the two hidden layers")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both arms (1: immune to a busy machine)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: checks that it works")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.smoke:
            result = run(epochs=1, repeats=1, max_steps=3)
        else:
            result = run(args.epochs, args.repeats, hidden=args.hidden)
    finally:
        torch.set_num_threads(threads)
    print(
        f"plain {result['plain_s']:.2f} s, with CosmologyMonitor {result['monitor_s']:.2f} s: "
        f"overhead ratio {result['ratio']:.3f} (median of pairs; target ≤ 1.10); pairs: "
        + " ".join(f"{r:.3f}" for r in sorted(result["ratios"]))
    )
    return result


if __name__ == "__main__":
    main()
