"""The modes of an `FLRWDual` (docs/theory.md T7, T8, T10): curvatures, masses, stability and
fates of the NTK modes, and the mean-field mode. A mixin of `cosmo_optim.dual.FLRWDual`, kept
apart so that the dual's background (T3–T6, T9) and its perturbations read separately.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import torch
from torch import Tensor

from cosmo_optim.losses import loss_derivatives
from cosmo_optim.spectrum import uniform_overlaps

if TYPE_CHECKING:
    from cosmo_optim.cosmology import Cosmology
    from cosmo_optim.losses import PerSampleLoss

__all__ = ["MEAN_FIELD_OVERLAP", "MODE_CLASSES", "DualModes"]

#: A mode is the mean field when more than half its weight lies in the uniform direction,
#: overlap² > 1/2 (T7 caveat). For one output at most one mode can pass, since the squared
#: overlaps of orthonormal modes with a unit vector sum to ≤ 1.
MEAN_FIELD_OVERLAP: Final = 1.0 / math.sqrt(2.0)
#: Mode classes, in the order they are tested (T8, T10).
MODE_CLASSES: Final = ("tachyonic", "unstable", "oscillating", "frozen", "overdamped")


class DualModes:
    """The mode read-out of `FLRWDual` (T7, T8, T10); see that class."""

    if TYPE_CHECKING:  # provided by FLRWDual
        eigenvalues: Tensor
        eigenvectors: Tensor
        loss: PerSampleLoss
        outputs: Tensor
        targets: Tensor | None
        cosmology: Cosmology
        _cache: dict[str, Any]

        @property
        def num_samples(self) -> int: ...

        @property
        def num_outputs(self) -> int: ...

        @property
        def hubble_rate(self) -> float: ...

        @property
        def hubble_time_steps(self) -> float: ...

    @property
    def mode_curvatures(self) -> Tensor:
        """κ_k = m_k² = (λ_k/N) u_kᵀ ℓ''(f) u_k, 1/time² (T8).

        ℓ''(f) is the block-diagonal per-sample Hessian at the current outputs; at a uniform
        state f = φ̄·1 this is exactly (λ_k/N) ℓ''(φ̄) of T8.
        """
        if "curv" not in self._cache:
            _, _, hess = loss_derivatives(self.loss, self.outputs, self.targets)
            assert hess is not None
            n, c = self.num_samples, self.num_outputs
            u = self.eigenvectors.reshape(n, c, -1)
            quad = torch.einsum("nak,nab,nbk->k", u, hess.to(u.dtype), u)
            self._cache["curv"] = self.eigenvalues / n * quad
        return self._cache["curv"]

    @property
    def mode_masses(self) -> Tensor:
        """m_k = sqrt(κ_k), 1/time (T8); NaN for a negative curvature (tachyonic mode)."""
        k = self.mode_curvatures
        return torch.where(k >= 0, k.clamp(min=0).sqrt(), torch.full_like(k, math.nan))

    @property
    def mass_over_hubble(self) -> Tensor:
        """m_k/H: > 3/2 oscillates in the continuum, < 3/2 is overdamped (T8)."""
        return self.mode_masses / self.hubble_rate

    @property
    def relaxation_steps(self) -> Tensor:
        """The overdamped relaxation time 3H/m_k² in optimiser steps, (1 − β)/(η κ_k) (T8)."""
        c = self.cosmology
        return (1.0 - c.momentum) / (c.lr * self.mode_curvatures)

    @property
    def stability_margins(self) -> Tensor:
        """η κ_k / 2(1 + β) per mode; the discrete map diverges on a mode at ≥ 1 (T10)."""
        c = self.cosmology
        return c.lr * self.mode_curvatures / (2.0 * (1.0 + c.momentum))

    @property
    def stability_margin(self) -> float:
        """The largest of `stability_margins` (T10)."""
        return float(self.stability_margins.max())

    def mode_classes(self, horizon: float | None = None, frozen_factor: float = 10.0) -> list[str]:
        """Each mode's fate over `horizon` steps (default: one Hubble time) (T8, T10).

        Tested in order, with the exact discrete thresholds for curvature κ = m²:
        "tachyonic" κ < 0 (grows); "unstable" η κ ≥ 2(1 + β); "oscillating"
        η κ > (1 − sqrt β)² (shrinks by sqrt β per step); "frozen" when its relaxation time
        (1 − β)/(η κ) steps exceeds `frozen_factor` × horizon; otherwise "overdamped".
        """
        c = self.cosmology
        horizon = self.hubble_time_steps if horizon is None else float(horizon)
        if not (horizon > 0 and frozen_factor > 0):
            raise ValueError(
                f"Invalid horizon={horizon!r} or frozen_factor={frozen_factor!r}; both must be > 0."
            )
        out = []
        for kappa in self.mode_curvatures.tolist():
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

    def active_modes(self, horizon: float | None = None, frozen_factor: float = 10.0) -> int:
        """How many modes move within `horizon` steps: all but the frozen ones (T8)."""
        return sum(k != "frozen" for k in self.mode_classes(horizon, frozen_factor))

    @property
    def uniform_overlaps(self) -> Tensor:
        """|u_k·1|/sqrt(N) per mode; for C outputs, the norm of u_k's projection on the
        C uniform directions (T7)."""
        return uniform_overlaps(self.eigenvectors, self.num_samples)

    def mean_field_mode(self, threshold: float = MEAN_FIELD_OVERLAP) -> int | None:
        """The best-aligned mode if its uniform overlap exceeds `threshold`, else None (T7)."""
        overlaps = self.uniform_overlaps
        best = int(torch.argmax(overlaps))
        return best if float(overlaps[best]) > threshold else None
