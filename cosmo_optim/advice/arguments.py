"""The question asked of `suggest_hyperparameters`, validated: each bad value is a ValueError
that names it, the constraint and the fix, raised before the model is touched."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from torch import nn

__all__ = ["Options", "check_arguments", "check_trainable"]


class Options(NamedTuple):
    """The question asked, validated (the keyword arguments of `suggest_hyperparameters`)."""

    horizon_steps: int
    batch_size: int | None
    target_loss: float | None
    residual_fraction: float
    safety: float | None
    probe_size: int | None
    seed: int


def check_arguments(
    horizon_steps: Any, batch_size: Any, target_loss: Any, residual_fraction: Any, safety: Any,
    probe_size: Any, seed: int, num_inputs: int,
) -> Options:
    """The arguments as `Options`, or a ValueError naming the first bad one and its fix."""
    if isinstance(horizon_steps, bool) or not isinstance(horizon_steps, int) or horizon_steps < 1:
        raise ValueError(
            f"Invalid horizon_steps: {horizon_steps!r}; it must be an integer ≥ 1 (the number "
            "of optimiser steps you plan to train for)."
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"Invalid batch_size: {batch_size!r}; it must be an integer ≥ 1, or None for "
            "full-batch training."
        )
    if target_loss is not None and not math.isfinite(float(target_loss)):
        raise ValueError(f"Invalid target_loss: {target_loss!r}; it must be a finite number.")
    if not 0 < float(residual_fraction) <= 1:
        raise ValueError(
            f"Invalid residual_fraction: {residual_fraction!r}; it must be in (0, 1] (the share "
            "of the projected residual |Uᵀ ∂L/∂f|² the relevant modes must carry)."
        )
    if safety is not None and not 0 < float(safety) <= 1:
        raise ValueError(
            f"Invalid safety: {safety!r}; it must be in (0, 1] (1 is the exact heavy-ball "
            "optimum, smaller values plan for a stiffest curvature 1/safety times larger), or "
            "None to measure it by trials."
        )
    if probe_size is not None and not (isinstance(probe_size, int) and 1 <= probe_size):
        raise ValueError(f"Invalid probe_size: {probe_size!r}; it must be an integer ≥ 1.")
    if num_inputs < 1:
        raise ValueError("Invalid inputs: no samples; pass a batch of shape (N, ...), N ≥ 1.")
    return Options(horizon_steps, batch_size,
                    None if target_loss is None else float(target_loss),
                    float(residual_fraction), None if safety is None else float(safety),
                    probe_size, seed)



def check_trainable(model: nn.Module) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"Invalid model: {type(model).__name__} has no trainable parameters "
            "(none with requires_grad=True), so there is nothing to optimise. "
            "Unfreeze some parameters first."
        )
