"""The mini-batch rule on the effective step (docs/advice.md "Mini-batches", T1, T2, T10).

Momentum SGD moves a slow mode by the effective step ε = η/(1 − β) per step (T2: the
friction (1 − β)/√η sets the terminal velocity), and gradient noise heats every mode in
proportion to ε: for the heavy ball on a quadratic with mini-batch gradient covariance Σ_B the
stationary excess loss is ε tr Σ_B / 4 well inside the edge of stability (derived in
docs/advice.md). Asking that noise floor to stay below a fraction `NOISE_FLOOR_FRACTION` (γ) of
the target, with tr Σ ∝ loss near it (ν = tr Σ / L, measured), gives

    1/ε_B = 1/ε + c(B) ν / (4γ),        c(B) = (N − B) / ((N − 1) B),

ε the full-batch plan's effective step. The lr is scaled and β kept, so ε_B/ε = η_B/η, and a
smaller batch never gets a larger effective step (c(B) falls with B, ν ≥ 0).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import torch

from cosmo_optim.advice.heavy_ball import ModeReadout
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.spectrum import flat_kernel

__all__ = [
    "NOISE_FLOOR_FRACTION", "batch_cosmology", "noise_coefficient", "noise_floor", "noise_per_loss",
    "slowdown",
]

#: The noise floor ε tr Σ_B / 4 may reach this fraction of the target loss.
NOISE_FLOOR_FRACTION: Final = 0.5


def noise_per_loss(read: ModeReadout) -> float:
    """ν = tr Σ / L: the per-sample gradient variance per unit of loss, from the kernel (T4).

    |g_i|² = ℓ'_iᵀ Θ_ii ℓ'_i (the kernel's diagonal blocks), |G|² = ℓ'ᵀ Θ ℓ' / N², tr Σ the
    population variance mean_i |g_i|² − |G|², L the mean per-sample loss on the probe.
    Units: loss per squared parameter, the inverse of an effective step.
    """
    grad = read.grad.reshape(read.grad.shape[0], -1)
    n = grad.shape[0]
    flat = flat_kernel(read.kernel)
    g = grad.to(flat.dtype)
    mean_sq = float(g.reshape(-1) @ flat @ g.reshape(-1)) / n**2  # |G|²
    blocks = read.kernel.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # Θ_ii, (N, C, C)
    per_sample = torch.einsum("na,nab,nb->n", g, blocks.to(flat.dtype), g)
    trace_sigma = max(float(per_sample.mean()) - mean_sq, 0.0)
    loss = float(read.values.mean())
    return trace_sigma / loss if loss > 0 else math.inf


def noise_coefficient(batch_size: int | None, num_inputs: int) -> float:
    """c(B) = (N − B)/((N − 1) B): Σ_B = c(B) Σ for B of N inputs drawn without replacement.

    0 for full batch (None or B ≥ N)."""
    if batch_size is None or batch_size >= num_inputs:
        return 0.0
    return (num_inputs - batch_size) / ((num_inputs - 1) * batch_size)


def noise_floor(effective_step: float, trace_sigma: float, batch_size: int | None,
                num_inputs: int) -> float:
    """F = ε c(B) tr Σ / 4: the heavy ball's stationary excess loss from mini-batch noise.

    Exact for a quadratic with curvatures κ ≪ 2(1 + β)/η and constant noise covariance Σ per
    sample (docs/advice.md derives it from the stationary variance of T1's recursion):
    every mode holds ε c(B) s_k / 4 whatever its curvature, s_k its share of tr Σ.
    """
    return effective_step * noise_coefficient(batch_size, num_inputs) * trace_sigma / 4.0


def batch_cosmology(full: Cosmology, nu: float, batch_size: int | None, num_inputs: int,
                    floor_fraction: float = NOISE_FLOOR_FRACTION) -> Cosmology:
    """The mini-batch universe: the effective step lowered by the noise floor, β kept (T1, T2).

    ε_B = ε / (1 + F(ε)/(γ L)) with F the `noise_floor` of the full-batch plan's effective step
    ε = η/(1 − β), tr Σ = ν L, γ = `floor_fraction`: i.e. 1/ε_B = 1/ε + c(B) ν/(4γ), whose
    floor F(ε_B) < γ L. Returns (η ε_B/ε, β); full batch (c = 0) returns `full` unchanged.
    """
    effective = full.lr / (1.0 - full.momentum)
    per_loss = noise_floor(effective, nu, batch_size, num_inputs)  # F(ε)/L
    if per_loss == 0.0:
        return full
    return Cosmology(full.lr / (1.0 + per_loss / floor_fraction), full.momentum)


def slowdown(full: np.ndarray, batch: np.ndarray, steps: int, factor: float) -> float:
    """How much longer the mini-batch plan takes than the trialled full-batch one, by the
    frozen-kernel map (T10): the steps its curve needs to reach the ratio the full-batch curve
    reaches in the trial's `steps` (oscillating modes keep their √β per step, overdamped ones
    slow by the lr factor), or 1/factor if it does not get there."""
    if factor == 1.0 or steps == 0:
        return 1.0
    ratio = full[min(steps, len(full) - 1)] / full[0]
    hits = np.flatnonzero(batch / batch[0] <= ratio)
    return hits[0] / steps if hits.size and ratio < 1 else 1.0 / factor
