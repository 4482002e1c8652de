"""Fixtures of the monitor tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from torch import nn


@pytest.fixture
def mse_steps() -> Callable[..., None]:
    """``mse_steps(model, opt, x, y, n, scheduler=None)``: n full-batch MSE optimiser steps,
    the scheduler (if any) stepped after each."""

    def steps(model: nn.Module, opt: Any, x: Any, y: Any, n: int, scheduler: Any = None) -> None:
        for _ in range(n):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()

    return steps
