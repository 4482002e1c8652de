"""What a trained run says about its dual (docs/theory.md T4–T10): the deviations of the
predictions from the trained outputs, Ω_φ along the run, and the reasons behind the two
verdicts of `check_duality` — failures of the dynamics, and the diagnostics (the lazy regime,
T4) that explain them but are never failures of their own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cosmo_optim.dual.flrw import FLRWDual
from cosmo_optim.dual.predict import Prediction

__all__ = ["deviations", "diagnostics", "failures", "vacuum_domination_along"]


def deviations(dual: FLRWDual, actual: np.ndarray, continuum: Prediction,
               discrete: Prediction | None) -> dict[str, Any]:
    """Relative deviations of the predictions (`DualityReport` docstring), over the steps
    trained (all of them unless training diverged)."""
    m = len(actual)
    mean = actual.mean(axis=1)
    change = float(np.linalg.norm(mean[-1] - mean[0]))
    total = float(np.linalg.norm(actual[-1] - actual[0]))
    u = dual.eigenvectors.to(torch.float64).cpu().numpy()
    modes = actual.reshape(m, -1) @ u
    out: dict[str, Any] = {"mean_field_change": change}
    if not change > 0:
        return out
    scale = math.sqrt(dual.num_samples) * change
    for name, pred in (("", continuum), ("_discrete", discrete)):
        if pred is None:
            continue
        gap = np.linalg.norm(pred.mean_field[:m] - mean, axis=1) / change
        mode_gap = np.abs(pred.modes[:m] - modes) / scale  # type: ignore[index]
        out[f"mean_field_end{name}"] = float(gap[-1])
        out[f"mean_field_max{name}"] = float(gap.max())
        out[f"mode_end{name}"] = mode_gap[-1]
        out[f"mode_max{name}"] = mode_gap.max(axis=0)
        miss = float(np.linalg.norm(pred.outputs[m - 1] - actual[-1]))  # type: ignore[index]
        out[f"outputs_end{name}"] = miss / total if total > 0 else math.nan
    return out


def vacuum_domination_along(dual: FLRWDual, actual: Tensor) -> np.ndarray:
    """Ω_φ,n along the trained run: `FLRWDual.vacuum_domination` of the state at each step,
    with the backward-difference velocity (f_n − f_{n−1})/Δt, zero at the start (T1, T6)."""
    dt = dual.cosmology.time_step
    f = actual.to(dual.outputs.dtype).reshape(len(actual), *dual.outputs.shape)
    omega = np.empty(len(f))
    for i in range(len(f)):
        v = (f[i] - f[i - 1]) / dt if i else torch.zeros_like(f[0])
        omega[i] = dual.replace(outputs=f[i], velocity=v, step=i).vacuum_domination
    return omega


def failures(dual: FLRWDual, dev: dict[str, Any], diverged_at: int | None,
             tol: float) -> list[str]:
    """Why the network does not follow its dual's field equation; empty when it does."""
    out = []
    if diverged_at is not None:
        out.append(f"training diverged: NaN or inf outputs at step {diverged_at} (stability "
                   f"margin {dual.stability_margin:.3g}; ≥ 1 is unstable by T10)")
    if dual.stability_margin >= 1:
        out.append(f"stability margin {dual.stability_margin:.3g} ≥ 1: η κ ≥ 2(1 + β), "
                   "the discrete map is unstable (T10)")
    if not dev["mean_field_change"] > 0:
        out.append("the mean field did not move: relative deviations are undefined")
        return out
    for key, what in (("mean_field_end", "mean field"), ("outputs_end", "output vector")):
        value = dev[key]
        if not math.isfinite(value):
            out.append(f"the {what}'s prediction is not finite (the ODE left every finite value)")
        elif value > tol:
            out.append(f"the {what} ended {value:.1%} of its change away from the prediction "
                       f"(> {tol:.0%})")
    return out


def diagnostics(drift: np.ndarray, alphas: np.ndarray, tol: float) -> list[str]:
    """How far the run left the lazy regime (T4): explains a failure, never one itself."""
    out = []
    if drift.max() > tol:
        out.append(f"NTK drifted {drift.max():.0%} (kernel distance > {tol:g}): "
                   "outside the lazy regime (T4)")
    # The kernel distance ignores the kernel's scale (always 0 for N = 1): check α_eff too.
    alpha_change = float(np.abs(alphas / alphas[0] - 1).max())
    if alpha_change > tol:
        out.append(f"α_eff changed by {alpha_change:.0%} (> {tol:.0%}): "
                   "outside the lazy regime (T4)")
    return out
