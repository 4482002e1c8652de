"""The question asked of `suggest_hyperparameters`, validated: each bad value is a ValueError
that names it, the constraint and the fix, raised before the model is touched."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from torch import Tensor, nn

from cosmo_optim.ntk import ModelInputs

__all__ = ["Options", "check_arguments", "check_trainable", "model_inputs"]


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
    probe_size: Any, seed: int,
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


def model_inputs(inputs: Any, targets: Tensor | None) -> ModelInputs:
    """The inputs as the model takes them (`ModelInputs`: a tensor, a tuple of positional
    arguments, a dict of keyword arguments), with one target per sample where there are
    targets."""
    x = ModelInputs(inputs)
    if isinstance(targets, Tensor) and (targets.dim() == 0 or targets.shape[0] != len(x)):
        raise ValueError(
            f"Mismatched shapes: {len(x)} input samples ({x!r}) and targets "
            f"{tuple(targets.shape)} need the same number of samples (dim 0). Fix: pass one "
            "target per input sample."
        )
    return x
