"""The background of an FLRW dual (docs/theory.md T3, T5, T6, T9): the potential the mean field
rolls in, its energy against the vacuum's, and the slow-roll parameters, as plain functions of
the probe outputs, the per-sample loss and the mean-field coupling α_eff. `FLRWDual` reads its
background out through them; its modes are in :mod:`.modes`.

Shapes: `outputs` f is (N, ...) with C = f[0].numel() outputs per input; a uniform output φ
is (M, C) for M values at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cosmo_optim.losses import PerSampleLoss, loss_derivatives

__all__ = [
    "field_range",
    "loss_at_mean_field",
    "max_learning_rate",
    "mean_loss",
    "potential",
    "slow_roll",
    "uniform_outputs",
    "vacuum_domination",
]


def vacuum_domination(speed_squared: Any, loss_energy: Any, vacuum_energy: float) -> Any:
    """Ω_φ = (½ |φ̄̇|² + α_eff ℓ̄(φ̄))/Λ: the field's energy density over the vacuum's (T6).

    `speed_squared` is |φ̄̇|² (1/time², summed over the C outputs), `loss_energy` the potential
    energy above the vacuum α_eff ℓ̄(φ̄) = V(φ̄) − Λ; numbers or arrays/tensors alike. The
    duality with gravity needs Ω_φ ≪ 1. The one definition, used by `FLRWDual` and the
    duality check.
    """
    return (0.5 * speed_squared + loss_energy) / vacuum_energy


def uniform_outputs(phi: Tensor, outputs: Tensor) -> Tensor:
    """Outputs equal to φ on every probe input, for M values φ (M, C): (M·N, ...)."""
    m, n = phi.shape[0], outputs.shape[0]
    rows = phi.reshape(m, 1, -1).expand(m, n, outputs[0].numel())
    return rows.reshape(m * n, *outputs.shape[1:])


def mean_loss(loss: PerSampleLoss, phi: Tensor, outputs: Tensor,
              targets: Tensor | None) -> Tensor:
    """ℓ̄(φ) = (1/N) Σ_i ℓ(φ, y_i) at M uniform outputs φ (M, C): (M,) (T5)."""
    y = targets
    if y is not None:
        y = y.repeat(phi.shape[0], *([1] * (y.dim() - 1)))
    values = loss.per_sample(uniform_outputs(phi, outputs), y)
    return values.reshape(phi.shape[0], outputs.shape[0]).mean(dim=1)


def loss_at_mean_field(loss: PerSampleLoss, outputs: Tensor,
                       targets: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """ℓ̄, ℓ̄', ℓ̄'' at the mean field φ̄ = (1/N) Σ_i f_i (shapes (), (C,), (C, C); T5, T9)."""
    n = outputs.shape[0]
    mean_field = outputs.reshape(n, -1).mean(dim=0)
    v, g, h = loss_derivatives(loss, uniform_outputs(mean_field.reshape(1, -1), outputs), targets)
    assert h is not None
    return v.mean(), g.sum(0) / n, h.sum(0) / n


def slow_roll(alpha_eff: float, vacuum_energy: float, ell: Tensor, grad: Tensor,
              hess: Tensor) -> tuple[float, float]:
    """(ε_V, η_V) = (½ |V'|²/V², V''/V) of V = α_eff ℓ̄ + Λ from ℓ̄, ℓ̄', ℓ̄'' at φ̄ (T9);
    η_V is the largest curvature for C > 1."""
    v = alpha_eff * float(ell) + vacuum_energy
    eps = 0.5 * (alpha_eff * float(grad.norm()) / v) ** 2
    eta = alpha_eff * float(torch.linalg.eigvalsh(hess).max()) / v
    return eps, eta


def potential(phi: float | Tensor, alpha_eff: float, vacuum_energy: float,
              mean_loss: Callable[[Tensor], Tensor], num_outputs: int,
              dtype: torch.dtype) -> Tensor:
    """V(φ) = α_eff ℓ̄(φ) + Λ for φ of shape (...,) (one output) or (..., C) (T5, T7), with
    `mean_loss` the map (M, C) ↦ ℓ̄ (M,)."""
    p = torch.as_tensor(phi, dtype=dtype)
    batch = p.shape if num_outputs == 1 else p.shape[:-1]
    flat = p.reshape(-1, num_outputs)
    with torch.no_grad():
        v = alpha_eff * mean_loss(flat) + vacuum_energy
    return v.reshape(batch)


def field_range(centre: float, lower: float | None, upper: float | None, num: int,
                dtype: torch.dtype) -> Tensor:
    """`num` values of one field on [lower, upper], by default centre ± max(1, |centre|)."""
    width = max(1.0, abs(centre))
    lo = centre - width if lower is None else lower
    hi = centre + width if upper is None else upper
    return torch.linspace(lo, hi, num, dtype=dtype)


def max_learning_rate(alpha_eff: float, loss_at_rest: Callable[[], float], momentum: Any,
                      default_momentum: float, tolerance: float) -> Any:
    """η_max = tolerance·(1 − β)²/(3 α_eff ℓ̄(φ̄)) (T6); `loss_at_rest()` is ℓ̄(φ̄), asked for
    once the arguments are valid; `momentum` None means `default_momentum`."""
    if not tolerance > 0:
        raise ValueError(f"Invalid tolerance: {tolerance!r}; it must be > 0 (an Ω_φ bound).")
    beta = default_momentum if momentum is None else np.asarray(momentum, float)
    if np.any((np.asarray(beta) < 0) | (np.asarray(beta) >= 1)):
        raise ValueError(f"Invalid momentum: {momentum!r}; it must satisfy 0 ≤ β < 1.")
    energy = 3.0 * alpha_eff * loss_at_rest()
    with np.errstate(divide="ignore"):
        return tolerance * (1.0 - beta) ** 2 / energy if energy > 0 else np.inf * (1.0 - beta)
