"""The rationale of a suggestion (docs/theory.md T3, T8, T10): the decision of
`suggest_hyperparameters` in plain language — which modes, which bound was active, the
heavy-ball optimum, the mini-batch correction, and what to expect.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from cosmo_optim.advice.heavy_ball import ModeReadout, Search
from cosmo_optim.advice.trial import TRIAL_TOLERANCE, Trial

__all__ = ["prediction_line", "rationale"]


def rationale(
    read: ModeReadout, found: Search, relevant: Tensor, fraction: float, safety: float,
    initial: float, target: float, horizon_steps: int, noise: float, factor: float,
    batch_size: int | None, num_inputs: int, trial: Trial,
) -> str:
    """The decision in plain language: which modes, which bound was active, what to expect."""
    p, dual, curve = found.plan, found.dual, found.curve
    c = p.cosmology
    kappa = read.curvatures.numpy()
    stiffest = int(np.argmax(kappa))
    lines = [
        f"NTK on {dual.num_samples} probe inputs × {dual.num_outputs} outputs "
        f"({len(kappa)} modes); initial loss {initial:.4g}.",
        f"{len(relevant)} mode(s) carry {fraction:.0%} of the projected residual "
        f"|Uᵀ ∂L/∂f|²; the slowest of them has curvature κ = {p.fraction_min:.3g} on the "
        "predicted path (T8).",
    ]
    if p.active == "residual_fraction":
        lines.append(
            f"Active bound: the residual fraction; κ_min = {p.kappa_min:.3g} is damped critically."
        )
    else:
        why = "the horizon" if p.active == "horizon" else "the predicted time to target"
        lines.append(
            f"Active bound: {why}. Modes lighter than κ = {p.need_min:.3g} cannot move "
            f"within {found.need} steps, so κ_min = {p.kappa_min:.3g} is damped critically instead."
        )
    lines += [
        f"Stiffest mode {stiffest}: κ = {kappa[stiffest]:.3g}, planned as "
        f"κ_max = {p.kappa_max:.3g} (safety {safety:g}).",
        f"Heavy-ball optimum (Polyak) for κ in [{p.kappa_min:.3g}, {p.kappa_max:.3g}]: "
        "κ_min at the oscillation threshold η κ = (1 − √β)² (m = 3H/2, T8/T10), κ_max "
        "inside the edge of stability η κ < 2(1 + β) (T10).",
    ]
    if factor < 1:
        lines.append(
            f"Mini-batches of {batch_size} of {num_inputs}: gradient-noise scale "
            f"B_noise = {noise:.3g} samples lowers the lr by ×{factor:.3g}; "
            "β re-derived to keep κ_min critically damped."
        )
    lines.append(
        f"Suggestion: lr = {c.lr:.4g}, momentum = {c.momentum:.4g}; stability margin "
        f"η κ/2(1 + β) = {dual.stability_margin:.3g} (< 1 on every probe mode); "
        f"H = {c.hubble_rate:.3g}, Λ = {c.vacuum_energy:.3g}, "
        f"Hubble time {c.hubble_time_steps:.3g} steps (T3)."
    )
    lines.append(prediction_line(found, target, horizon_steps, curve, trial))
    return "\n".join(lines)


def prediction_line(found: Search, target: float, horizon_steps: int, curve: np.ndarray,
                    trial: Trial) -> str:
    """The rationale's last line: the time to target predicted, or why there is none."""
    if trial.error > TRIAL_TOLERANCE:
        return (
            f"Prediction: cannot predict the time to target from one kernel. In a {trial.steps}-"
            f"step trial on the probe set the loss fell by {trial.actual_drop:.1%} where the "
            f"lazy-limit map (T10) says {trial.predicted_drop:.1%}: the kernel moves (outside "
            "the lazy regime, T4). The suggested lr and momentum still hold; re-planning "
            "(CosmologyScheduler) follows the curvature as it changes."
        )
    if found.predicted is None:
        return (f"Prediction (lazy limit, T10 map): target loss {target:.4g} not reached "
                f"within {horizon_steps} steps; predicted loss there {curve[-1]:.4g}.")
    checked = f"; a {trial.steps}-step trial agreed within {trial.error:.0%}" if trial.steps else ""
    return (f"Prediction (lazy limit, T10 map): target loss {target:.4g} after "
            f"{found.predicted} steps; loss {curve[-1]:.4g} at step {len(curve) - 1}{checked}.")
