"""Watch a digits classifier's universe evolve in TensorBoard: one line added to a Lightning run.

An ordinary LightningModule (an MLP on scikit-learn's bundled 8×8 digits, no download) trained
with CosmoSGD. The only monitoring code is the `CosmologyMonitor(...)` in `callbacks=[...]`.

    python examples/lightning_digits.py                       # logs to runs/lightning_digits
    tensorboard --logdir runs/lightning_digits                # then open the Scalars,
                                                              # Custom Scalars, Images tabs
    python examples/lightning_digits.py --save-figures docs/images   # also write the PNGs

At the end it prints every tag found in the event file, grouped by TensorBoard plugin.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from cosmo_optim import CosmoSGD
from cosmo_optim.callbacks import CosmologyMonitor

Batch = tuple[torch.Tensor, torch.Tensor]


class DigitsClassifier(L.LightningModule):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 10)
        )
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Λ = 1 and Δt = 0.1: lr = 0.01, momentum ≈ 0.83, a Hubble time of ≈ 17 steps
        return CosmoSGD(self.parameters(), vacuum_energy=1.0, time_step=0.1)


def loaders(batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y))
    train, val = random_split(data, [1500, 297], generator=torch.Generator().manual_seed(0))
    return (DataLoader(train, batch_size=batch_size, shuffle=True),
            DataLoader(val, batch_size=batch_size))


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", default="runs/lightning_digits")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--save-figures", metavar="DIR", help="also save the final figures as PNG")
    args = parser.parse_args(argv)

    L.seed_everything(0)
    train, val = loaders()
    model = DigitsClassifier()
    monitor = CosmologyMonitor(model.loss, every_n_train_steps=25, log_figures_every_n_steps=100)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(args.log_dir, name="", version=0),
        callbacks=[monitor],  # <- the one added line
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, train, val)

    if args.save_figures:
        out = Path(args.save_figures)
        out.mkdir(parents=True, exist_ok=True)
        for tag, fig in monitor.tracker.figures().items():
            fig.savefig(out / f"monitor_{tag.split('/')[-1]}.png", dpi=100)

    events = EventAccumulator(str(Path(args.log_dir) / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    tags = {kind: sorted(events.Tags()[kind]) for kind in ("scalars", "histograms", "images")}
    for kind, names in tags.items():
        print(f"{kind} ({len(names)}): {', '.join(names)}")
    return tags


if __name__ == "__main__":
    main()
