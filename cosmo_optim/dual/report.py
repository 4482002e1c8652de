"""What `check_duality` found: `DualityReport` (the trajectories, the deviations and the two
verdicts) and `Background` (is the de Sitter background self-consistent?) (docs/theory.md
T4–T10). Their figures are drawn by :mod:`.figures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import figures
from cosmo_optim.dual.causes import Cause
from cosmo_optim.dual.flrw import FLRWDual
from cosmo_optim.dual.predict import Prediction

__all__ = ["Background", "DualityReport"]


@dataclass(frozen=True)
class Background:
    """Is the de Sitter background self-consistent? Ω_φ along the trained run (T6, Fig. 2).

    Ω_φ,n = (½ |φ̄̇_n|² + α_eff ℓ̄(φ̄_n))/Λ is `FLRWDual.vacuum_domination` read at every trained
    step (velocity: the backward difference, zero at the start as the optimiser's, T1).
    `vacuum_dominated` is max_n Ω_φ,n ≤ `tolerance`; `max_learning_rate` is the largest lr
    that keeps Ω_φ ≤ `tolerance` at rest at the start with the same momentum (T6,
    `FLRWDual.max_learning_rate`); dimensionless except the lr (torch SGD's, T1).
    """

    omega_start: float
    omega_max: float
    tolerance: float
    max_learning_rate: float

    @property
    def vacuum_dominated(self) -> bool:
        """Ω_φ stayed ≤ `tolerance` on every step (T6)."""
        return bool(self.omega_max <= self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (JSON-serialisable)."""
        return {"omega_start": self.omega_start, "omega_max": self.omega_max,
                "tolerance": self.tolerance, "vacuum_dominated": self.vacuum_dominated,
                "max_learning_rate": self.max_learning_rate}

    def describe(self) -> str:
        """One sentence: the verdict on the background and what would change it."""
        if self.vacuum_dominated:
            return (f"vacuum dominated: Ω_φ ≤ {self.omega_max:.2g} (≤ {self.tolerance:g}) on "
                    "every step (T6)")
        return (f"not vacuum dominated: Ω_φ reached {self.omega_max:.2g} (> {self.tolerance:g}); "
                f"lr ≤ {self.max_learning_rate:.3g} would keep Ω_φ ≤ {self.tolerance:g} at rest "
                "(T6). The field equation is unaffected: this is the self-gravitating reading")


@dataclass
class DualityReport:
    """What `check_duality` measured: actual vs predicted trajectories and two verdicts.

    `passed` answers *does the network follow its dual's field equation?* (the dynamics, T5,
    T7, T10): every reason in `reasons` is a failure of the dynamics, followed by its likely
    causes (`causes`, `cosmo_optim.dual.causes.Cause`s ranked by measured size); `notes`
    carry the causes measured on a run that passed. `background` answers *is the background
    self-consistently de Sitter?* (Ω_φ, T6), separately. Along the run, at `probe_steps`:
    `kernel_change` ‖Θ_n − Θ_0‖/‖Θ_0‖, `ntk_drift` the kernel distance (1 − cosine) and
    `alpha_eff` the mean field's coupling (T4, T7).

    Deviations are relative to the actual change of the mean field, |φ̄_T − φ̄_0| (paper
    Fig. 3, 5): `mean_field_end` = |φ̄_pred(T) − φ̄(T)|/|φ̄_T − φ̄_0|, `mean_field_max` the same
    maximised over the steps; `mode_end`/`mode_max` per kernel mode k use the amplitudes
    u_kᵀ f divided by sqrt(N) (so the uniform mode's amplitude is φ̄); `outputs_end` is
    |f_pred(T) − f(T)|/|f(T) − f(0)| for the whole output vector, `outputs_max` its largest
    gap along the run over its largest move, max_n |f_pred(n) − f(n)|/max_n |f(n) − f(0)|.
    Keys ending in `_discrete` compare with the exact discrete map (T10) instead of the ODE.
    If training diverged, `diverged_at` is the first step with NaN/inf outputs and the
    trajectories stop before it.
    """

    dual: FLRWDual
    steps: int
    actual_outputs: np.ndarray
    continuum: Prediction
    discrete: Prediction | None
    probe_steps: np.ndarray
    ntk_drift: np.ndarray
    alpha_eff: np.ndarray
    vacuum_domination: np.ndarray
    deviations: dict[str, Any]
    background: Background
    passed: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    diverged_at: int | None = None
    kernel_change: np.ndarray = field(default_factory=lambda: np.zeros(1))
    causes: tuple[Cause, ...] = ()

    @property
    def cosmology(self) -> Cosmology:
        return self.dual.cosmology

    @property
    def steps_trained(self) -> int:
        """Steps with finite outputs: `steps`, or fewer if training diverged."""
        return len(self.actual_outputs) - 1

    @property
    def actual_mean_field(self) -> np.ndarray:
        """φ̄_n, shape (steps_trained + 1, C)."""
        return np.asarray(self.actual_outputs.mean(axis=1))

    @property
    def actual_modes(self) -> np.ndarray:
        """Mode amplitudes u_kᵀ f_n on the initial eigenvectors, shape (steps_trained + 1, k)."""
        flat = self.actual_outputs.reshape(len(self.actual_outputs), -1)
        return np.asarray(flat @ self.dual.eigenvectors.to(torch.float64).numpy())

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (JSON-serialisable)."""
        d = self.dual
        return {
            "passed": self.passed, "reasons": list(self.reasons), "notes": list(self.notes),
            "background": self.background.to_dict(), "diverged_at": self.diverged_at,
            "steps": self.steps, "initial": d.summary(),
            "efolds": self.cosmology.efolds(self.steps),
            "ntk_drift_max": float(self.ntk_drift.max()),
            "kernel_change_max": float(self.kernel_change.max()),
            "causes": [{"name": c.name, "size": c.size, "limit": c.limit} for c in self.causes],
            "alpha_eff_start_end": [float(self.alpha_eff[0]), float(self.alpha_eff[-1])],
            "vacuum_domination_max": float(np.nanmax(self.vacuum_domination)),
            "eigenvalues": d.eigenvalues.tolist(), "uniform_overlaps": d.uniform_overlaps.tolist(),
            "mode_classes": d.mode_classes(self.steps),
            "deviations": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for k, v in self.deviations.items()},
        }

    def to_markdown(self, modes: int = 4) -> str:
        """A short human-readable report (Markdown): the dynamics headline, then the background."""
        d, c, dev = self.dual, self.cosmology, self.deviations
        eps, eta_v = d.slow_roll
        mf_modes = "none" if d.mean_field_mode() is None else _modes(d.mean_field_modes)
        bg = self.background
        lines = [
            f"## FLRW duality check: {'holds' if self.passed else 'does not hold'}",
            "",
            *(f"- {r}" for r in self.reasons
              or ["dynamics: the trained outputs follow the dual's prediction (T5, T7, T10)"]),
            *(f"- note: {n}" for n in self.notes),
            f"- background: {bg.describe()}",
            "",
            "| quantity | value |", "|---|---|",
            f"| lr η, momentum β | {c.lr:.4g}, {c.momentum:.4g} |",
            f"| Hubble rate H, vacuum energy Λ | {c.hubble_rate:.4g}, {c.vacuum_energy:.4g} |",
            f"| Hubble time (steps), e-folds trained | {c.hubble_time_steps:.4g}, "
            f"{c.efolds(self.steps_trained):.4g} |",
            f"| N probe inputs × C outputs | {d.num_samples} × {d.num_outputs} |",
            f"| α_eff = λ_mf/N, mean kernel entry | {d.alpha_eff:.4g}, "
            f"{d.mean_kernel_entry:.4g} |",
            f"| mean-field mode(s) (overlap) | {mf_modes} "
            f"({float(d.uniform_overlaps.max()):.3f}) |",
            f"| Ω_φ at start, max (background) | {bg.omega_start:.3g}, {bg.omega_max:.3g} |",
            f"| slow roll ε_V, η_V | {eps:.3g}, {eta_v:.3g} |",
            f"| stability margin ηκ/2(1+β) | {d.stability_margin:.3g} |",
            f"| kernel change, max ‖Θ_n − Θ_0‖/‖Θ_0‖ | {float(self.kernel_change.max()):.3g} |",
            f"| NTK drift (max kernel distance) | {float(self.ntk_drift.max()):.3g} |",
            f"| α_eff start → end | {self.alpha_eff[0]:.4g} → {self.alpha_eff[-1]:.4g} |",
            f"| mean field: end, max deviation (ODE) | {dev.get('mean_field_end', math.nan):.3g}, "
            f"{dev.get('mean_field_max', math.nan):.3g} |",
            f"| mean field: end deviation (discrete map) | "
            f"{dev.get('mean_field_end_discrete', math.nan):.3g} |",
            f"| whole output vector: end, max deviation | {dev.get('outputs_end', math.nan):.3g}, "
            f"{dev.get('outputs_max', math.nan):.3g} |",
            "",
            "| mode | λ_k | overlap | m_k/H | class | end dev | max dev |",
            "|---|---|---|---|---|---|---|",
        ]
        classes = d.mode_classes(self.steps)
        nan = np.full(d.eigenvalues.numel(), math.nan)
        end, peak = dev.get("mode_end", nan), dev.get("mode_max", nan)
        for k in range(min(modes, d.eigenvalues.numel())):
            lines.append(
                f"| {k} | {float(d.eigenvalues[k]):.4g} | {float(d.uniform_overlaps[k]):.3f} | "
                f"{float(d.mass_over_hubble[k]):.3g} | {classes[k]} | "
                f"{end[k]:.3g} | {peak[k]:.3g} |"
            )
        return "\n".join(lines) + "\n"

    def plot(self, modes: int = 3) -> dict[str, Any]:
        """Figures (matplotlib object API, no pyplot): "potential", "modes", "spectrum"."""
        d, steps = self.dual, np.arange(self.steps_trained + 1)
        figs: dict[str, Any] = {}
        if d.num_outputs == 1:
            figs["potential"] = figures.potential_figure(
                d, self.actual_mean_field[:, 0], self.continuum.mean_field[: len(steps), 0]
            )
        pred_modes = self.continuum.modes[: len(steps)]  # type: ignore[index]
        figs["modes"] = figures.modes_figure(d, steps, self.actual_modes, pred_modes, modes)
        figs["spectrum"] = figures.spectrum_figure(d, self.probe_steps, self.ntk_drift)
        return figs


def _modes(indices: list[int]) -> str:
    """Mode numbers as the table prints them: '1', '0–9' for a run, else '0, 2, 5'."""
    if len(indices) > 2 and indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}–{indices[-1]}"
    return ", ".join(map(str, indices))
