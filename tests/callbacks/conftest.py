"""Fixtures of the framework tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from torch import nn


@pytest.fixture
def regression_module() -> Callable[[Callable[[Any], Any]], Any]:
    """A factory of LightningModules regressing with a 3-8-1 tanh MLP (``self.net``) and MSE,
    whose ``configure_optimizers`` returns ``configure(module)``."""
    L = pytest.importorskip("lightning.pytorch")

    class Module(L.LightningModule):
        def __init__(self, configure: Callable[[Any], Any]) -> None:
            super().__init__()
            self.configure = configure
            self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return self.configure(self)

    return Module
