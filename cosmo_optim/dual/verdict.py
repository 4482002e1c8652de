"""What a trained run says about its dual (docs/theory.md T4–T10): the deviations of the
predictions from the trained outputs, Ω_φ along the run, and the reasons behind the two
verdicts of `check_duality` — the failures of the dynamics, and the measured causes that
explain them (the kernel's move out of the lazy limit, the edge of stability, the continuum
limit), ranked by size; a cause on a run that held is a note, never a failure of its own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cosmo_optim.dual.causes import (
    Cause,
    beyond_edge,
    continuum_error,
    diverged,
    kernel_moved,
    ranked,
)
from cosmo_optim.dual.flrw import FLRWDual
from cosmo_optim.dual.predict import Prediction

__all__ = ["causes", "deviations", "failures", "vacuum_domination_along"]


def deviations(dual: FLRWDual, actual: np.ndarray, continuum: Prediction,
               discrete: Prediction | None) -> dict[str, Any]:
    """Relative deviations of the predictions (`DualityReport` docstring), over the steps
    trained (all of them unless training diverged)."""
    m = len(actual)
    mean = actual.mean(axis=1)
    change = float(np.linalg.norm(mean[-1] - mean[0]))
    total = float(np.linalg.norm(actual[-1] - actual[0]))
    excursion = float(np.linalg.norm((actual - actual[0]).reshape(m, -1), axis=1).max())
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
        outputs = pred.outputs[:m]  # type: ignore[index]
        miss = np.linalg.norm((outputs - actual).reshape(m, -1), axis=1)
        out[f"outputs_end{name}"] = float(miss[-1]) / total if total > 0 else math.nan
        out[f"outputs_max{name}"] = float(miss.max()) / excursion if excursion > 0 else math.nan
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
    """What failed: divergence and the measured misses of the prediction; empty when the
    network followed its dual's field equation (the causes behind them are `causes`')."""
    out = [] if diverged_at is None else [diverged(diverged_at, dual.stability_margin).text]
    if dual.stability_margin >= 1:
        out.append(f"the dual's heavy-ball map diverges (stability margin "
                   f"{dual.stability_margin:.3g} ≥ 1, T10)")
    if not dev["mean_field_change"] > 0:
        return out or ["the mean field did not move: relative deviations are undefined"]
    misses = (("mean_field_end", "mean field", "ended {:.1%} of its change away from"),
              ("outputs_max", "output vector", "strayed up to {:.1%} of its largest move from"))
    for key, what, miss in misses:
        value = dev[key]
        if not math.isfinite(value):
            out.append(f"the {what}'s prediction is not finite (the ODE left every finite value)")
        elif value > tol:
            out.append(f"the {what} {miss.format(value)} the prediction (> {tol:.0%})")
    return out


def causes(dual: FLRWDual, dev: dict[str, Any], kernel_changes: np.ndarray, tol: float,
           kernel_tol: float, failed: bool) -> tuple[Cause, ...]:
    """Why the run left (or could leave) its dual, largest first (`cosmo_optim.dual.causes`):
    steps beyond the edge of stability (T10), the kernel's move out of the lazy limit (T4),
    and the continuum limit (the ODE misses where the exact map holds, T2). A failed run
    always names the largest measured one."""
    c = dual.cosmology
    edge = beyond_edge(dual.stability_margin, " at the start")
    found: list[Cause | None] = [
        None if edge.severity >= 1 else edge,  # beyond the edge it comes first: the cause
        kernel_moved(float(kernel_changes.max()), "over the run", kernel_tol),  # of the rest
    ]
    ode, discrete = dev.get("outputs_max", math.nan), dev.get("outputs_max_discrete", math.nan)
    if math.isfinite(ode) and math.isfinite(discrete) and ode > discrete + tol:
        step_size = 2.0 * (1.0 + c.momentum) * dual.stability_margin  # η κ_max
        found.append(continuum_error(ode, discrete, step_size))
    rest = ranked(found, keep_largest=failed and edge.severity < 1)
    return (edge, *rest) if edge.severity >= 1 else rest
