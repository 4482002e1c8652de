"""The rationale of a suggestion (docs/theory.md T3, T8, T10): the decision of
`suggest_hyperparameters` in plain language — which modes, which bound was active, the margin
the trials measured, the mini-batch correction, what to expect — and the warnings it raises
when its own numbers say the target will not be met.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from torch import Tensor

from cosmo_optim.advice.batch import BatchPlan
from cosmo_optim.advice.heavy_ball import ModeReadout
from cosmo_optim.advice.margin import Margin
from cosmo_optim.cosmology import Cosmology

__all__ = ["Decision", "rationale", "warnings_for"]


class Decision(NamedTuple):
    """Everything `suggest_hyperparameters` decided, as the rationale reports it."""

    relevant: Tensor
    target: float
    margin: Margin
    measured: bool  # the margin came from the ladder (safety=None)
    edge_growth: float  # κ_max at the end of the chosen trial / at initialisation
    noise: float  # ν = tr Σ / L at the end of the chosen trial
    cosmology: Cosmology  # the suggestion (mini-batch rule applied)
    factor: float  # η_B / η
    curve: np.ndarray  # the frozen-kernel loss curve of the suggestion (T10)
    predicted: int | None  # its first crossing of the target
    predictable: bool  # the trial followed the frozen-kernel map (T4)
    trial_steps_to_target: float  # at the trials' measured rate, for the suggestion
    batch: BatchPlan | None  # the mini-batch trials and rule (None for full batch)


def rationale(read: ModeReadout, d: Decision, fraction: float, initial: float,
              horizon_steps: int, batch_size: int | None, num_inputs: int) -> str:
    """The decision in plain language: which modes, which bound was active, what to expect."""
    p = d.margin.rung.found.plan
    kappa = read.curvatures.numpy()
    stiffest = int(np.argmax(kappa))
    lines = [
        f"NTK on {read.dual.num_samples} probe inputs × {read.dual.num_outputs} outputs "
        f"({len(kappa)} modes); initial loss {initial:.4g}.",
        f"{len(d.relevant)} mode(s) carry {fraction:.0%} of the projected residual "
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
            f"Active bound: {why}. Modes lighter than κ = {p.need_min:.3g} cannot move within "
            f"{d.margin.rung.found.need} steps, so κ_min = {p.kappa_min:.3g} is damped critically."
        )
    lines += [_margin_line(d, kappa[stiffest], stiffest)]
    if d.batch is not None:
        lines.append(_batch_line(d, d.batch, batch_size, num_inputs))
    c = d.cosmology
    lines.append(
        f"Suggestion: lr = {c.lr:.4g}, momentum = {c.momentum:.4g} (effective step "
        f"{c.lr / (1 - c.momentum):.3g}); H = {c.hubble_rate:.3g}, Λ = {c.vacuum_energy:.3g}, "
        f"Hubble time {c.hubble_time_steps:.3g} steps (T3)."
    )
    lines.append(_prediction_line(d, horizon_steps))
    return "\n".join(lines)


def _margin_line(d: Decision, stiffest: float, index: int) -> str:
    rung = d.margin.rung
    tried = ", ".join(f"{r.safety:g} {r.trial.verdict} after {r.trial.steps}"
                      for r in d.margin.rungs)
    how = "measured by trials" if d.measured else "given"
    growth = ("" if math.isnan(d.edge_growth) else
              f"; the edge κ_max moved ×{d.edge_growth:.3g} during the chosen trial")
    return (f"Stiffest mode {index}: κ = {stiffest:.3g}; margin {rung.safety:g} ({how}: "
            f"{tried}), so κ_max = {rung.found.plan.kappa_max:.3g} sits at the heavy-ball "
            f"optimum's edge η κ_max = (1 + √β)² < 2(1 + β) (T10){growth}.")


def _batch_line(d: Decision, b: BatchPlan, batch_size: int | None, num_inputs: int) -> str:
    tried = ", ".join(f"×{r.factor:g} {r.verdict} after {r.steps}" for r in b.runs)
    return (
        f"Mini-batches of {batch_size} of {num_inputs}: mini-batch trials of the lr at the "
        f"reference batch {b.reference} ({tried}) were fastest at ×{b.chosen.factor:g}, so the "
        f"gradient noise is ν = {b.noise:.3g} per unit loss (the kernel reads ν = tr Σ/L = "
        f"{d.noise:.3g}); the effective step η/(1 − β) is lowered ×{d.factor:.3g} so that its "
        "noise floor stays below half the loss, β kept (docs/advice.md, A3)."
    )


def _prediction_line(d: Decision, horizon_steps: int) -> str:
    """The rationale's last line: the time to target predicted, or why there is none."""
    trial = d.margin.rung.trial
    if not d.predictable:
        return (
            f"Prediction: cannot predict the time to target from one kernel: in the "
            f"{trial.steps}-step trial the loss fell by {trial.drop:.1%}, not as the frozen-"
            "kernel map (T10) says: the kernel moves (outside the lazy regime, T4). "
            + _rate_clause(d)
        )
    if d.predicted is None:
        return (f"Prediction (lazy limit, T10 map): target loss {d.target:.4g} not reached "
                f"within {horizon_steps} steps; predicted loss there {d.curve[-1]:.4g}.")
    agreed = f"; the trial agreed over {trial.steps} steps" if trial.steps else ""
    return (f"Prediction (lazy limit, T10 map): target loss {d.target:.4g} after {d.predicted} "
            f"steps{agreed}.")


def _rate_clause(d: Decision) -> str:
    steps = d.trial_steps_to_target
    if not math.isfinite(steps):
        return "The trial made no progress towards the target."
    return f"At the trial's rate the target takes about {steps:.0f} steps."


def warnings_for(d: Decision, horizon_steps: int, batch_size: int | None) -> tuple[str, ...]:
    """The warnings a suggestion raises: no trial held, or its own numbers miss the target."""
    out = []
    rung = d.margin.rung
    if not rung.trial.held:
        if d.measured:
            what = (f"at every margin from {d.margin.rungs[0].safety:g} to {rung.safety:g} the "
                    "trial's loss rose above its start or stalled")
            fix = "pass safety= to choose the margin yourself"
        else:
            what = f"the trial at safety={rung.safety:g} {_verdict(rung.trial.verdict)}"
            fix = "pass safety=None to measure the margin by trials"
        out.append(
            f"suggest_hyperparameters: no progress in the trial: {what} "
            f"({rung.trial.steps} steps, loss ×{_ratio(rung.trial.losses)}). The suggestion may "
            "not train. Check the inputs' scale, the targets and the loss, or " + fix + "."
        )
    miss = _miss(d, horizon_steps)
    if miss:
        batch = "" if batch_size is None else ", or a larger batch_size"
        out.append(
            f"suggest_hyperparameters: the suggestion's own prediction misses target_loss="
            f"{d.target:.4g} within horizon_steps={horizon_steps}: {miss}. Train longer "
            f"(horizon_steps), raise target_loss{batch}."
        )
    return tuple(out)


def _miss(d: Decision, horizon_steps: int) -> str:
    """Why the suggestion's own estimate of the time to target exceeds the horizon, or "".

    In the lazy regime (the trial followed the frozen-kernel map) and for full batch that
    estimate is the map; outside it, or for mini-batches (the map is noise-free), the trials'
    measured rate."""
    if d.predictable and d.batch is None:
        return "" if d.predicted is not None else (
            f"the frozen-kernel map (T10) ends at loss {d.curve[-1]:.4g}")
    steps = d.trial_steps_to_target
    if steps <= horizon_steps:
        return ""
    if not math.isfinite(steps):
        return "the trial made no progress towards it"
    return f"at the trial's rate it takes about {steps:.0f} steps"


def _verdict(verdict: str) -> str:
    return {"crossed": "rose above its initial loss", "stalled": "stalled"}.get(verdict, verdict)


def _ratio(losses: np.ndarray) -> str:
    last = float(losses[-1] / losses[0])
    return f"{last:.3g}" if math.isfinite(last) else "inf"
