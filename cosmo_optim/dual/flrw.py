"""`FLRWDual`: the universe a training state is, read off an NTK spectrum (docs/theory.md T3–T10).

A probe set of N inputs, the model's outputs f there (C per input), the kernel's eigenpairs
(λ_k, u_k), a per-sample loss ℓ and the optimiser's (η, β) define a scalar field in de Sitter
space: the mean field φ̄ rolls in V(φ) = α_eff ℓ̄(φ) + Λ with α_eff = λ_mf/N, the eigenvalue of
the mode that carries the mean field over N (T5, T7), and every other kernel mode is a
perturbation of mass m_k² = (λ_k/N) ℓ'' (T8). `FLRWDual` is a frozen
value object holding that state and deriving every cosmological number from it, through
the plain functions of :mod:`.background` (T3–T6, T9) and :mod:`.modes` (T7, T8, T10).

Units: continuum time t = n·sqrt(η) (T2); H, m_k in 1/time; Λ, V, ρ in reduced Planck units.
For a model with C outputs the kernel is the full output-space kernel, indexed by
(sample, output) flattened sample-major to N·C rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import background, modes
from cosmo_optim.dual.modes import MEAN_FIELD_OVERLAP
from cosmo_optim.losses import PerSampleLoss, loss_derivatives, per_sample_loss
from cosmo_optim.optim import as_cosmology
from cosmo_optim.spectrum import flat_kernel, uniform_overlaps

__all__ = ["FLRWDual"]

#: The fields that define a state (`replace` copies them; the mean kernel entry is derived).
_STATE_FIELDS = ("eigenvalues", "eigenvectors", "loss", "outputs", "cosmology", "targets",
                 "velocity", "step")


def _finite(name: str, value: Tensor, fix: str) -> None:
    if not torch.isfinite(value).all():
        raise ValueError(f"Invalid {name}: it contains NaN or inf values. {fix}")


def _check_state(lam: Tensor, vec: Tensor, f: Tensor, velocity: Tensor | None) -> None:
    """Refuse a state no dual can be read from: bad shapes, no modes, unsorted or NaN values."""
    if f.dim() == 0:
        raise ValueError("Invalid outputs: a scalar; outputs must have shape (N, ...).")
    n, c = f.shape[0], f[0].numel()
    if lam.dim() != 1 or vec.dim() != 2 or vec.shape != (n * c, lam.shape[0]):
        raise ValueError(
            f"Mismatched shapes: eigenvalues {tuple(lam.shape)}, eigenvectors "
            f"{tuple(vec.shape)}, outputs {tuple(f.shape)}; eigenvectors must be "
            f"(N·C, k) = ({n * c}, k) with k = len(eigenvalues) and N·C the outputs' size."
        )
    if lam.shape[0] == 0:
        raise ValueError("Invalid eigenvalues: empty; keep at least the top mode.")
    _finite("outputs", f, "The model diverged or was fed bad inputs; lower the lr.")
    _finite("eigenvalues", lam, "Recompute the NTK in float64.")
    if bool((lam[:-1] < lam[1:]).any()):
        raise ValueError("Invalid eigenvalues: they must be sorted in descending order.")
    if velocity is not None and velocity.shape != f.shape:
        raise ValueError(
            f"Mismatched shapes: velocity {tuple(velocity.shape)} vs outputs {tuple(f.shape)}."
        )


def _kept_mean_entry(lam: Tensor, vec: Tensor, f: Tensor) -> float:
    """The mean kernel entry Σ_k λ_k (u_k·1)² / N² over the kept modes (per output)."""
    n, c = f.shape[0], f[0].numel()
    sums = vec.reshape(n, c, -1).sum(dim=0)  # (C, k)
    return float((lam * sums.pow(2)).sum() / (n * n * c))


def _descending(lam: Tensor, vec: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs sorted by descending eigenvalue (left as they are if their shapes are bad)."""
    if lam.dim() == 1 and vec.dim() == 2 and vec.shape[1] == lam.shape[0]:
        order = torch.argsort(lam, descending=True)
        lam, vec = lam[order], vec[:, order]
    return lam, vec


def _kernel_modes(kernel: Tensor, outputs: Tensor, k: int | None) -> tuple[Tensor, Tensor, float]:
    """The top `k` eigenpairs of a probe NTK, descending, and its mean diagonal-block entry."""
    n, c = outputs.shape[0], outputs[0].numel()
    if kernel.dim() == 4:
        if kernel.shape != (n, n, c, c):
            raise ValueError(
                f"Mismatched shapes: kernel {tuple(kernel.shape)} vs outputs "
                f"{tuple(outputs.shape)}; a full kernel must be (N, N, C, C) = {(n, n, c, c)}."
            )
        kernel = flat_kernel(kernel)
    if kernel.shape != (n * c, n * c):
        raise ValueError(
            f"Mismatched shapes: kernel {tuple(kernel.shape)} vs outputs "
            f"{tuple(outputs.shape)}; expected ({n * c}, {n * c}) (N·C rows). "
            "A multi-output model needs the full output-space kernel (output='full')."
        )
    _finite("kernel", kernel, "Recompute the NTK (float64 helps).")
    kernel = 0.5 * (kernel + kernel.T).detach()
    lam, vec = torch.linalg.eigh(kernel)
    keep = n * c if k is None else int(k)
    if not 1 <= keep <= n * c:
        raise ValueError(f"Invalid k: {k!r}; it must be between 1 and N·C = {n * c}.")
    lam, vec = lam.flip(0)[:keep].clamp(min=0), vec.flip(1)[:, :keep]  # Θ is PSD (T4)
    entry = float(kernel.reshape(n, c, n, c).diagonal(dim1=1, dim2=3).mean())
    return lam, vec, entry


def _settle(dual: FLRWDual) -> None:
    """A new state checked and normalised: the loss per sample, the optimiser as a Cosmology,
    tensors detached in the eigenvectors' dtype, zero velocity at rest, the mean entry known."""
    lam, vec, f = dual.eigenvalues, dual.eigenvectors, dual.outputs
    set_ = object.__setattr__
    set_(dual, "loss", per_sample_loss(dual.loss))
    set_(dual, "cosmology", as_cosmology(dual.cosmology))
    _check_state(lam, vec, f, dual.velocity)
    v = torch.zeros_like(f) if dual.velocity is None else dual.velocity
    for name, value in (("outputs", f), ("eigenvalues", lam), ("velocity", v)):
        set_(dual, name, value.detach().to(vec.dtype))
    set_(dual, "eigenvectors", vec.detach())
    if math.isnan(dual.mean_kernel_entry):
        set_(dual, "mean_kernel_entry", _kept_mean_entry(lam, vec, f))


@dataclass(frozen=True, eq=False)
class FLRWDual:
    """The FLRW universe dual to one training state (T3–T10), from `from_kernel`/`from_eigen`.

    Fields: `eigenvalues` (k,) descending and `eigenvectors` (N·C, k) of the NTK on the probe
    set; the per-sample `loss`; the `outputs` f (N, ...) and optional `targets`; the
    `cosmology` (η, β); `velocity` ḟ (continuum units, shape of f, zero at the start); `step`
    n; `mean_kernel_entry` (exact when built from a kernel, else from the kept modes).

    Example:
        >>> K = torch.tensor([[2.0, 1.9], [1.9, 2.0]], dtype=torch.float64)
        >>> f = torch.zeros(2, 1, dtype=torch.float64)
        >>> dual = FLRWDual.from_kernel(K, torch.nn.MSELoss(), f, targets=f + 1,
        ...                             cosmology=Cosmology(lr=0.01, momentum=0.0))
        >>> round(dual.alpha_eff, 6), round(dual.hubble_rate, 4), dual.mode_classes(horizon=50)
        (1.95, 3.3333, ['overdamped', 'frozen'])
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    loss: PerSampleLoss
    outputs: Tensor
    cosmology: Cosmology
    targets: Tensor | None = None
    velocity: Tensor | None = None
    step: int = 0
    mean_kernel_entry: float = math.nan

    def __post_init__(self) -> None:
        _settle(self)

    # ----- constructors -------------------------------------------------------------------
    @classmethod
    def from_eigen(cls, eigenvalues: Tensor, eigenvectors: Tensor, loss: Any, outputs: Tensor,
                   *, cosmology: Any, targets: Tensor | None = None,
                   velocity: Tensor | None = None, step: int = 0) -> FLRWDual:
        """From the top-k NTK eigenpairs (e.g. `ntk_eigen(...)`'s) (T7); sorts them descending."""
        lam, vec = _descending(eigenvalues, eigenvectors)
        return cls(lam, vec, loss, outputs, cosmology, targets, velocity, step)

    @classmethod
    def from_kernel(cls, kernel: Tensor, loss: Any, outputs: Tensor, *, cosmology: Any,
                    targets: Tensor | None = None, velocity: Tensor | None = None,
                    step: int = 0, k: int | None = None) -> FLRWDual:
        """From an NTK on the probe set: (N, N), (N, N, C, C) or (N·C, N·C); keeps the top `k`.

        The NTK is positive semi-definite (T4): round-off negative eigenvalues become 0.
        """
        lam, vec, entry = _kernel_modes(kernel, outputs, k)
        return cls(lam, vec, loss, outputs, cosmology, targets, velocity, step, entry)

    def replace(self, **changes: Any) -> FLRWDual:
        """A copy with some fields changed (frozen value object)."""
        fields = {k: getattr(self, k) for k in _STATE_FIELDS}
        if not {"eigenvalues", "eigenvectors"} & set(changes):
            fields["mean_kernel_entry"] = self.mean_kernel_entry
        fields.update(changes)
        return FLRWDual(**fields)

    # ----- sizes and the background (T3, T9) ----------------------------------------------
    @property
    def num_samples(self) -> int:
        """N, the number of probe inputs."""
        return int(self.outputs.shape[0])

    @property
    def num_outputs(self) -> int:
        """C, the outputs per input."""
        return int(self.outputs[0].numel())

    @property
    def hubble_rate(self) -> float:
        """H = (1 − β)/(3 sqrt(η)), 1/time (T3)."""
        return self.cosmology.hubble_rate

    @property
    def vacuum_energy(self) -> float:
        """Λ = (1 − β)²/(3η) (T3)."""
        return self.cosmology.vacuum_energy

    @property
    def hubble_time_steps(self) -> float:
        """Hubble time 1/H in optimiser steps, 3/(1 − β) (T3)."""
        return self.cosmology.hubble_time_steps

    @property
    def efolds(self) -> float:
        """e-folds so far, N_e = n (1 − β)/3 (T9)."""
        return self.cosmology.efolds(self.step)

    @cached_property
    def alpha_eff(self) -> float:
        """α_eff = λ_mf/N, the mean field's coupling: the eigenvalue of the mode that carries
        the mean field (the best-aligned with the uniform direction, T7) over N, in NTK units;
        the mean kernel entry where no mode is aligned. For C outputs, tr A / C of
        `mean_field_coupling`: the C mean-field modes' mean λ / N."""
        return modes.alpha_eff(self.eigenvalues, self.eigenvectors, self.num_samples,
                               self.num_outputs)

    @cached_property
    def mean_field_coupling(self) -> Tensor:
        """A (C, C), the mean field's coupling in φ̄̈ + 3Hφ̄̇ + A ℓ̄'(φ̄) = 0 (T7, `modes`)."""
        return modes.mean_field_coupling(self.eigenvalues, self.eigenvectors, self.num_samples,
                                         self.num_outputs)

    # ----- the mean field and its potential (T5, T6, T7, T9) -----------------------------
    @property
    def mean_field(self) -> Tensor:
        """φ̄ = (1/N) Σ_i f_i, shape (C,) (the projection on the uniform direction, T7)."""
        return self.outputs.reshape(self.num_samples, -1).mean(dim=0)

    @property
    def mean_field_velocity(self) -> Tensor:
        """φ̄̇ = (1/N) Σ_i ḟ_i, shape (C,), 1/time."""
        return self.velocity.reshape(self.num_samples, -1).mean(dim=0)  # type: ignore[union-attr]

    def mean_loss(self, phi: Tensor) -> Tensor:
        """The loss at a uniform output φ averaged over the probe targets, ℓ̄(φ) =
        (1/N) Σ_i ℓ(φ, y_i), for phi of shape (M, C): (M,). The potential is α_eff ℓ̄ + Λ (T5)."""
        return background.mean_loss(self.loss, phi, self.outputs, self.targets)

    def potential(self, phi: float | Tensor) -> Tensor:
        """V(φ) = α_eff ℓ̄(φ) + Λ with ℓ̄ the loss averaged over targets (T5, T7).

        `phi` is a number or a tensor of shape (...,) for one output, (..., C) for C outputs.
        """
        return background.potential(phi, self.alpha_eff, self.vacuum_energy, self.mean_loss,
                                    self.num_outputs, self.outputs.dtype)

    def potential_samples(
        self, lower: float | None = None, upper: float | None = None, num: int = 201
    ) -> tuple[np.ndarray, np.ndarray]:
        """(φ, V(φ)) sampled on [lower, upper], default φ̄ ± max(1, |φ̄|); one output only."""
        if self.num_outputs != 1:
            raise ValueError(
                f"potential_samples needs one output per input, got C={self.num_outputs}; "
                "call potential(phi) with phi of shape (..., C) instead."
            )
        phi = background.field_range(float(self.mean_field[0]), lower, upper, num,
                                     self.outputs.dtype)
        return phi.numpy(), self.potential(phi).numpy()

    @cached_property
    def _background(self) -> tuple[Tensor, Tensor, Tensor]:
        """ℓ̄, ℓ̄', ℓ̄'' at φ̄ (shapes (), (C,), (C, C))."""
        return background.loss_at_mean_field(self.loss, self.outputs, self.targets)

    @property
    def vacuum_domination(self) -> float:
        """Ω_φ = (½ φ̄̇² + α_eff ℓ̄(φ̄))/Λ; the duality with gravity needs Ω_φ ≪ 1 (T6)."""
        speed_squared = float(self.mean_field_velocity.pow(2).sum())
        loss_energy = self.alpha_eff * float(self._background[0])
        return float(background.vacuum_domination(speed_squared, loss_energy, self.vacuum_energy))

    @property
    def slow_roll(self) -> tuple[float, float]:
        """(ε_V, η_V) = (½ |V'|²/V², V''/V) at φ̄ (T9); the largest curvature for C > 1."""
        return background.slow_roll(self.alpha_eff, self.vacuum_energy, *self._background)

    def max_learning_rate(self, momentum: Any = None, tolerance: float = 0.1) -> Any:
        """η_max = tolerance·(1 − β)²/(3 α_eff ℓ̄(φ̄)): the lr keeping Ω_φ ≤ tolerance at rest (T6).

        `momentum` defaults to the optimiser's β; an array gives the curve of paper Fig. 2.
        Infinite when the loss is zero at φ̄.
        """
        return background.max_learning_rate(self.alpha_eff, lambda: float(self._background[0]),
                                            momentum, self.cosmology.momentum, tolerance)

    # ----- the modes (T7, T8, T10; formulas in .modes) ------------------------------------
    @cached_property
    def mode_curvatures(self) -> Tensor:
        """κ_k = m_k² = (λ_k/N) u_kᵀ ℓ''(f) u_k, 1/time² (T8).

        ℓ''(f) is the block-diagonal per-sample Hessian at the current outputs; at a uniform
        state f = φ̄·1 this is exactly (λ_k/N) ℓ''(φ̄) of T8.
        """
        hess = loss_derivatives(self.loss, self.outputs, self.targets)[2]
        assert hess is not None
        return modes.mode_curvatures(self.eigenvalues, self.eigenvectors, hess)

    @property
    def mode_masses(self) -> Tensor:
        """m_k = sqrt(κ_k), 1/time (T8); NaN for a negative curvature (tachyonic mode)."""
        return modes.mode_masses(self.mode_curvatures)

    @property
    def mass_over_hubble(self) -> Tensor:
        """m_k/H: > 3/2 oscillates in the continuum, < 3/2 is overdamped (T8)."""
        return self.mode_masses / self.hubble_rate

    @property
    def relaxation_steps(self) -> Tensor:
        """The overdamped relaxation time 3H/m_k² in optimiser steps, (1 − β)/(η κ_k) (T8)."""
        return modes.relaxation_steps(self.mode_curvatures, self.cosmology)

    @property
    def stability_margins(self) -> Tensor:
        """η κ_k / 2(1 + β) per mode; the discrete map diverges on a mode at ≥ 1 (T10)."""
        return modes.stability_margins(self.mode_curvatures, self.cosmology)

    @property
    def stability_margin(self) -> float:
        """The largest of `stability_margins` (T10)."""
        return float(self.stability_margins.max())

    def mode_classes(self, horizon: float | None = None, frozen_factor: float = 10.0) -> list[str]:
        """Each mode's fate over `horizon` steps (default: one Hubble time) (T8, T10).

        Tested in order, with the exact discrete thresholds for curvature κ = m²:
        "tachyonic" κ < 0 (grows); "unstable" η κ ≥ 2(1 + β); "oscillating"
        η κ > (1 − sqrt β)² (its sign changes: it shrinks by exactly sqrt β per step up to
        η κ = (1 + sqrt β)², more slowly beyond, flipping sign every step); "frozen" when its
        relaxation time (1 − β)/(η κ) steps exceeds `frozen_factor` × horizon; otherwise
        "overdamped".
        """
        return modes.mode_classes(self.mode_curvatures, self.cosmology, horizon, frozen_factor)

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
        return modes.mean_field_mode(self.uniform_overlaps, threshold)

    @property
    def mean_field_modes(self) -> list[int]:
        """The modes that carry the mean field, in spectral order: the C best-aligned with the
        uniform directions (one for one output) (T7); `alpha_eff` is read from them."""
        return modes.mean_field_modes(self.uniform_overlaps, self.num_outputs)

    def summary(self) -> dict[str, Any]:
        """The scalar read-out as plain Python numbers."""
        eps, eta = self.slow_roll
        mf = self.mean_field_mode()
        return {
            "step": self.step, "lr": self.cosmology.lr, "momentum": self.cosmology.momentum,
            "hubble_rate": self.hubble_rate, "vacuum_energy": self.vacuum_energy,
            "hubble_time_steps": self.hubble_time_steps, "efolds": self.efolds,
            "alpha_eff": self.alpha_eff, "mean_field_modes": self.mean_field_modes,
            "mean_kernel_entry": self.mean_kernel_entry,
            "mean_field": self.mean_field.tolist(), "vacuum_domination": self.vacuum_domination,
            "epsilon_V": eps, "eta_V": eta, "stability_margin": self.stability_margin,
            "mean_field_mode": mf, "max_learning_rate": float(self.max_learning_rate()),
        }
