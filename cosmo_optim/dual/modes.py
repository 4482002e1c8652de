"""The modes of an FLRW dual (docs/theory.md T7, T8, T10): curvatures, masses, stability and
fates of the NTK modes, and the mean-field mode, as plain functions of the kernel's eigenpairs,
the loss curvature and the optimiser's universe. `FLRWDual` reads its modes out through them;
its background (T3–T6, T9) is in :mod:`.background`.
"""

from __future__ import annotations

import math
from typing import Final

import torch
from torch import Tensor

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.spectrum import uniform_projections

__all__ = [
    "MEAN_FIELD_OVERLAP",
    "MODE_CLASSES",
    "alpha_eff",
    "mean_field_coupling",
    "mean_field_mode",
    "mean_field_modes",
    "mode_classes",
    "mode_curvatures",
    "mode_masses",
    "relaxation_steps",
    "stability_margins",
]

#: A mode is the mean field when more than half its weight lies in the uniform direction,
#: overlap² > 1/2 (T7 caveat). For one output at most one mode can pass, since the squared
#: overlaps of orthonormal modes with a unit vector sum to ≤ 1.
MEAN_FIELD_OVERLAP: Final = 1.0 / math.sqrt(2.0)
#: Mode classes, in the order they are tested (T8, T10).
MODE_CLASSES: Final = ("tachyonic", "unstable", "oscillating", "frozen", "overdamped")


def mode_curvatures(eigenvalues: Tensor, eigenvectors: Tensor, hessians: Tensor) -> Tensor:
    """κ_k = (λ_k/N) u_kᵀ ℓ''(f) u_k, 1/time² (T8), from the per-sample Hessians (N, C, C)."""
    n, c = hessians.shape[0], hessians.shape[1]
    u = eigenvectors.reshape(n, c, -1)
    quad = torch.einsum("nak,nab,nbk->k", u, hessians.to(u.dtype), u)
    return eigenvalues / n * quad


def mode_masses(curvatures: Tensor) -> Tensor:
    """m_k = sqrt(κ_k), 1/time (T8); NaN where κ_k < 0 (a tachyonic mode)."""
    k = curvatures
    return torch.where(k >= 0, k.clamp(min=0).sqrt(), torch.full_like(k, math.nan))


def relaxation_steps(curvatures: Tensor, cosmology: Cosmology) -> Tensor:
    """3H/m_k² in optimiser steps, (1 − β)/(η κ_k) (T8)."""
    c = cosmology
    return (1.0 - c.momentum) / (c.lr * curvatures)


def stability_margins(curvatures: Tensor, cosmology: Cosmology) -> Tensor:
    """η κ_k / 2(1 + β): the discrete map diverges on a mode at ≥ 1 (T10)."""
    c = cosmology
    return c.lr * curvatures / (2.0 * (1.0 + c.momentum))


def mode_classes(curvatures: Tensor, cosmology: Cosmology, horizon: float | None = None,
                 frozen_factor: float = 10.0) -> list[str]:
    """The fate of each mode of curvature κ over `horizon` steps (default one Hubble time),
    one of `MODE_CLASSES` tested in order (T8, T10); thresholds in `FLRWDual.mode_classes`."""
    c = cosmology
    horizon = c.hubble_time_steps if horizon is None else float(horizon)
    if not (horizon > 0 and frozen_factor > 0):
        raise ValueError(
            f"Invalid horizon={horizon!r} or frozen_factor={frozen_factor!r}; both must be > 0."
        )
    out = []
    for kappa in curvatures.tolist():
        ek = c.lr * kappa
        if ek < 0:
            out.append("tachyonic")
        elif ek >= 2.0 * (1.0 + c.momentum):
            out.append("unstable")
        elif ek > (1.0 - math.sqrt(c.momentum)) ** 2:
            out.append("oscillating")
        elif ek == 0 or (1.0 - c.momentum) / ek > frozen_factor * horizon:
            out.append("frozen")
        else:
            out.append("overdamped")
    return out


def mean_field_mode(overlaps: Tensor, threshold: float = MEAN_FIELD_OVERLAP) -> int | None:
    """The mode best aligned with the uniform direction if its overlap exceeds `threshold`,
    else None (T7)."""
    best = int(torch.argmax(overlaps))
    return best if float(overlaps[best]) > threshold else None


def mean_field_modes(overlaps: Tensor, num_outputs: int) -> list[int]:
    """The modes that carry the mean field φ̄ ∈ R^C: the C modes with the largest uniform
    overlap (all kept modes if fewer), in the order of the spectrum (T7). One output: the
    best-aligned mode. C outputs span C uniform directions, so C modes carry them (for a
    classifier, the C nearly degenerate modes of Θ ≈ K ⊗ I_C)."""
    count = min(num_outputs, overlaps.numel())
    return sorted(torch.argsort(overlaps, descending=True, stable=True)[:count].tolist())


def mean_field_coupling(eigenvalues: Tensor, eigenvectors: Tensor, num_samples: int,
                        num_outputs: int) -> Tensor:
    """A (C, C), the mean field's coupling in φ̄̈ + 3Hφ̄̇ + A ℓ̄'(φ̄) = 0 (T7), NTK units.

    While the `mean_field_modes` carry it (each overlap > `MEAN_FIELD_OVERLAP`):
    A = (1/N) Σ_k λ_k ŵ_k ŵ_kᵀ over them, ŵ_k the unit direction of mode k's projection w_k on
    the C uniform directions; for one output A = λ_mf/N. Where no mode carries it, the mean
    field is not a mode and A is the kernel's uniform block (1/N) Σ_k λ_k w_k w_kᵀ over every
    kept mode, which for the whole spectrum is the mean kernel block (1/N²) Σ_ij Θ_ij: the
    exact coupling of a uniform state.
    """
    n, c = num_samples, num_outputs
    projections = uniform_projections(eigenvectors, n)  # (C, k): w_k
    overlaps = projections.norm(dim=0)
    chosen = mean_field_modes(overlaps, c)
    lam = eigenvalues.to(projections.dtype)
    if not bool((overlaps[chosen] > MEAN_FIELD_OVERLAP).all()):
        return (projections * lam) @ projections.T / n
    w = projections[:, chosen]
    w_hat = w / w.norm(dim=0).clamp(min=torch.finfo(w.dtype).tiny)
    return (w_hat * lam[chosen]) @ w_hat.T / n


def alpha_eff(eigenvalues: Tensor, eigenvectors: Tensor, num_samples: int,
              num_outputs: int) -> float:
    """α_eff = tr A / C of `mean_field_coupling`: the mean-field mode's eigenvalue over N for
    one output, the C mean-field modes' mean eigenvalue over N for C (T7), in NTK units."""
    coupling = mean_field_coupling(eigenvalues, eigenvectors, num_samples, num_outputs)
    return float(coupling.diagonal().mean())
