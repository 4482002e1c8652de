"""The stability margin from measurement (docs/advice.md "The margin", T8, T10).

The heavy-ball plan is stable on every mode of the kernel at initialisation, but the kernel
moves: the edge of stability κ_max falls where cross-entropy saturates and rises under
progressive sharpening or a catapult, by factors from 0.1 to 100 within the first tens of
steps on the benchmark tasks. No constant margin fits both, so it is measured: the plan at
margin s puts the stiffest mode at κ_max/s (s = 1 is Polyak's optimum at the edge), and a
ladder of trials climbs down s = 1, 1/2, …, 1/256 until a trial of ≤ `TRIAL_STEPS` steps (or
the horizon) on the trial set holds (:mod:`.trial`: its loss never rises above its start and
falls). A trial that crosses its start stops there, so the rungs above the margin cost a few
steps each.

Two checks follow the first rung that holds. Where its trial followed the frozen-kernel map
(the lazy regime, T4) but the map puts the target beyond the trial, the edge can still move
before it (progressive sharpening that starts late): the trial is run again up to the
predicted time to target, at most `LONG_TRIAL_STEPS`, and the rung holds only if that one
does too. Where the trial set is a subset of the inputs, the time to target it measured is
checked against the loss on all inputs at its end (a small set is fitted sooner than a large
one) and the slower of the two is used.

Cost: one trial per rung tried (≤ 9), one for the re-plan and ≤ one longer trial, each
≤ `TRIAL_STEPS` (the longer one ≤ `LONG_TRIAL_STEPS`) full-batch steps on ≤ `TRIAL_ROWS`
inputs, one forward on all inputs, and each rung's plan (the frozen-kernel map over ≤ the
horizon, ≤ 4 rounds).
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import torch
from torch import Tensor, nn

from cosmo_optim.advice.heavy_ball import ModeReadout, Search, fixed_point, plan_for
from cosmo_optim.advice.trial import (
    TRIAL_STEPS,
    TRIAL_TOLERANCE,
    TrialRun,
    lazy_error,
    run_trial,
)
from cosmo_optim.losses import PerSampleLoss
from cosmo_optim.ntk import ModelInputs

__all__ = [
    "LONG_TRIAL_STEPS", "RUNGS", "TRIAL_ROWS", "Margin", "Rung", "TrialSet", "measure_margin",
    "try_plan",
]

#: The margins tried, boldest first: the stiffest mode planned at κ_max/s.
RUNGS: Final = tuple(0.5**k for k in range(9))
#: The trial set: at most this many inputs (a seeded subset), whatever the probe's size.
TRIAL_ROWS: Final = 256
#: A trial that followed the map towards a target beyond it is rerun for at most this long.
LONG_TRIAL_STEPS: Final = 4 * TRIAL_STEPS


class TrialSet(NamedTuple):
    """Where trials run: the inputs, their targets, and the target loss as a share of the
    initial loss on all inputs (a trial that gets there has reached the target); all the
    inputs and their targets, and that initial loss."""

    inputs: ModelInputs
    targets: Tensor | None
    goal: float
    all_inputs: ModelInputs
    all_targets: Tensor | None
    initial: float

    def steps_to(self, ell: PerSampleLoss, trial: TrialRun) -> float:
        """The trial's time to the goal (`TrialRun.steps_to`), or, where the trial set is a
        subset, the time at the rate the loss on all inputs fell over the trial if that is
        slower (a small set is fitted sooner than a large one)."""
        own = trial.steps_to(self.goal)
        if len(self.all_inputs) == len(self.inputs) or trial.steps == 0:
            return own
        with torch.no_grad():
            last = float(ell.training_loss(self.all_inputs.call(trial.net), self.all_targets))
        ratio = last / self.initial
        if not (math.isfinite(ratio) and 0 < ratio < 1):
            return math.inf
        return max(own, trial.steps * math.log(self.goal) / math.log(ratio))


class Rung(NamedTuple):
    """One rung of the ladder: the margin, its plan (with the frozen-kernel prediction) and
    its trial."""

    safety: float
    found: Search
    trial: TrialRun


class Margin(NamedTuple):
    """The measured margin: the rung whose trial held (or the last one), and every rung tried."""

    rung: Rung
    rungs: tuple[Rung, ...]


def try_plan(model: nn.Module, ell: PerSampleLoss, found: Search, trials: TrialSet,
             safety: float, steps: int) -> Rung:
    """Trial one plan for ≤ `steps` steps against its frozen-kernel curve (T10), which covers
    the horizon or the predicted time to target."""
    run = run_trial(model, ell, trials.inputs, trials.targets, found.plan.cosmology, steps,
                    trials.goal, found.curve / found.curve[0])
    return Rung(safety, found, run)


def measure_margin(model: nn.Module, ell: PerSampleLoss, read: ModeReadout, relevant: Tensor,
                   trials: TrialSet, horizon_steps: int, target: float, scale: float) -> Margin:
    """Climb down RUNGS until a trial holds; every rung's plan is the heavy-ball fixed point.

    A rung's time to target seeds the next rung's fixed point (a smaller step needs longer).
    The first rung that holds is checked further (`_longer`); then `_measured_need` re-plans
    it for the time to target its trial measured, kept if its own trial holds and gets there
    sooner.
    """
    tried: list[Rung] = []
    need: int | None = None
    steps = min(TRIAL_STEPS, horizon_steps)
    for safety in RUNGS:
        found = fixed_point(read, relevant, safety, horizon_steps, target, scale, need)
        need = None if found.predicted is None else 2 * found.need
        rung = try_plan(model, ell, found, trials, safety, steps)
        tried.append(rung)
        if rung.trial.held:
            longer = _longer(model, ell, trials, rung, horizon_steps)
            if longer is not None:
                tried.append(longer)
                if not longer.trial.held:
                    continue
                rung = longer
            again = _measured_need(model, ell, read, relevant, trials, rung, horizon_steps,
                                   target, scale, steps)
            if again is not None:
                tried.append(again)
                if _faster(ell, again, rung, trials):
                    return Margin(again, tuple(tried))
            return Margin(rung, tuple(tried))
    return Margin(tried[-1], tuple(tried))


def _longer(model: nn.Module, ell: PerSampleLoss, trials: TrialSet, rung: Rung,
            horizon_steps: int) -> Rung | None:
    """The rung's trial rerun up to the map's time to target (≤ LONG_TRIAL_STEPS and the
    horizon), if the trial followed the map (T4) and the map puts the target beyond it."""
    run = rung.trial
    if run.verdict != "held" or lazy_error(run, rung.found.curve) > TRIAL_TOLERANCE:
        return None
    predicted = rung.found.predicted
    far = min(LONG_TRIAL_STEPS, horizon_steps, horizon_steps if predicted is None else predicted)
    if far <= run.steps:
        return None
    return try_plan(model, ell, rung.found, trials, rung.safety, far)


def _faster(ell: PerSampleLoss, a: Rung, b: Rung, trials: TrialSet) -> bool:
    """Whether trial `a` held and gets to the goal sooner than trial `b` at its rate."""
    return a.trial.held and trials.steps_to(ell, a.trial) < trials.steps_to(ell, b.trial)


def _measured_need(model: nn.Module, ell: PerSampleLoss, read: ModeReadout, relevant: Tensor,
                   trials: TrialSet, rung: Rung, horizon_steps: int, target: float, scale: float,
                   steps: int) -> Rung | None:
    """The rung re-planned for the time to target its trial measured, trialled, if the
    frozen-kernel map's time is off (the kernel moved, T4) and the measured one is shorter.

    Outside the lazy regime the map misjudges which modes must move before the target (often
    it never gets there and plans for the horizon, β → 1); the trial's rate says when the
    target comes, so the modes too slow to move by then are not damped (T8, T10)."""
    measured = trials.steps_to(ell, rung.trial)
    if not (math.isfinite(measured) and measured < rung.found.need / 2):
        return None
    if lazy_error(rung.trial, rung.found.curve) <= TRIAL_TOLERANCE:
        return None
    found = plan_for(read, relevant, rung.safety, math.ceil(measured), horizon_steps, target,
                     scale)
    return try_plan(model, ell, found, trials, rung.safety, steps)
