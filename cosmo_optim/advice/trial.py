"""The trial of a plan (docs/theory.md T4, T10): a copy of the model trained full batch on the
trial set at one (η, β) for a few steps, the loss read before every step.

It answers two questions. Did the plan hold? Its loss must never rise above where it started
(nor above the frozen-kernel prediction's own overshoot: a rise means some mode's η κ crossed
the edge of stability 2(1 + β), T10, on the kernel as it moved) and must fall by at least
`PROGRESS` of the frozen-kernel prediction's log ratio (a network knocked into a dead or
saturated state stalls instead). :mod:`.margin` climbs down a ladder of margins until a trial
holds. Could the loss be predicted? Its log ratio must match the frozen-kernel map's within
`TRIAL_TOLERANCE` (the lazy regime, T4); otherwise no time to target is printed.

A mini-batch trial (`run_batch_trial`) trains a copy on mini-batches drawn from all inputs
and reads the loss on the trial set every `BATCH_EVAL_EVERY` steps: how fast a plan gets to
the target when its gradients are noisy (:mod:`.batch` ladders the effective step with it).
"""

from __future__ import annotations

import copy
import math
from typing import Final, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.losses import PerSampleLoss
from cosmo_optim.ntk import ModelInputs

__all__ = [
    "BATCH_EVAL_EVERY", "BATCH_TRIAL_STEPS", "CROSSING_SLACK", "PROGRESS", "TRIAL_STEPS",
    "TRIAL_TOLERANCE", "BatchRun", "TrialRun", "lazy_error", "run_batch_trial", "run_trial",
]

#: The trial's log loss ratio may differ from the predicted one by this fraction (lazy limit).
TRIAL_TOLERANCE: Final = 0.25
#: A trial that has not reached the target runs this many steps.
TRIAL_STEPS: Final = 30
#: A trial stalls if its log loss ratio is less than this fraction of the predicted one.
PROGRESS: Final = 0.25
#: A trial crosses if its loss exceeds its start and the predicted overshoot by this factor.
CROSSING_SLACK: Final = 1.001
#: A mini-batch trial runs this many steps (four full-batch trials: the loss noise that a
#: step too long for its batch builds up takes longer to show than an edge crossed).
BATCH_TRIAL_STEPS: Final = 4 * TRIAL_STEPS
#: A mini-batch trial reads the loss on the trial set every this many steps.
BATCH_EVAL_EVERY: Final = 10


class TrialRun(NamedTuple):
    """One trial: the loss before each step taken, how it ended, and the trained copy."""

    losses: np.ndarray  # losses[n]: loss after n steps (n = 0 … steps taken)
    verdict: str  # "reached" the target, "held", "crossed" its start, "stalled"
    net: nn.Module

    @property
    def held(self) -> bool:
        """Whether the plan held: the target was reached, or the loss fell without rising."""
        return self.verdict in ("reached", "held")

    @property
    def steps(self) -> int:
        return len(self.losses) - 1

    def steps_to(self, goal: float) -> float:
        """Steps to reach `goal` × the initial loss at the trial's mean exponential rate (the
        steps it took if it got there; inf if its loss did not fall)."""
        if self.verdict == "reached":
            return float(self.steps)
        ratio = float(self.losses[-1] / self.losses[0])
        if not goal < 1:
            return 0.0
        if not (math.isfinite(ratio) and 0 < ratio < 1) or goal <= 0:
            return math.inf
        return self.steps * math.log(goal) / math.log(ratio)

    @property
    def drop(self) -> float:
        """1 − final loss / initial loss (negative if it rose, −inf if it diverged)."""
        last = self.losses[-1]
        return 1.0 - last / self.losses[0] if math.isfinite(last) else -math.inf


def run_trial(model: nn.Module, ell: PerSampleLoss, inputs: ModelInputs, targets: Tensor | None,
              cosmology: Cosmology, steps: int, goal: float, predicted: np.ndarray) -> TrialRun:
    """Train a copy at `cosmology` on (`inputs`, `targets`), full batch, for ≤ `steps` steps.

    `predicted[n]` is the frozen-kernel loss ratio after n steps (T10; its last value holds
    beyond its end). The trial stops early when the loss reaches `goal` × its initial value
    ("reached"), or leaves the finite numbers or rises above its initial value beyond the
    prediction's own overshoot (the heavy ball's stiff modes overshoot near the edge),
    ("crossed"); after `steps` steps the loss must have fallen by at least `PROGRESS` × the
    predicted log loss ratio, or, where the prediction has not come back below the start yet,
    follow it within `TRIAL_TOLERANCE` ("held"); else "stalled".
    """
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=cosmology.lr, momentum=cosmology.momentum)
    envelope = np.maximum.accumulate(np.maximum(predicted, 1.0)) * CROSSING_SLACK
    losses: list[float] = []
    verdict = "held"
    for n in range(steps + 1):
        opt.zero_grad()
        value = ell.training_loss(inputs.call(net), targets)
        losses.append(float(value.detach()))
        allowed = envelope[min(n, len(envelope) - 1)] * losses[0]
        if n and not (math.isfinite(losses[-1]) and losses[-1] <= allowed):
            verdict = "crossed"
            break
        if losses[-1] <= goal * losses[0]:
            verdict = "reached"
            break
        if n < steps:
            value.backward()
            opt.step()
    run = TrialRun(np.asarray(losses), verdict, net)
    if verdict == "held" and not _progressed(run, predicted):
        return run._replace(verdict="stalled")
    return run


def _progressed(run: TrialRun, predicted: np.ndarray) -> bool:
    """At least PROGRESS of the predicted log loss ratio; where the map itself has not come
    back below the start yet (the heavy ball's overshoot near the edge), following the map."""
    expected = float(predicted[min(run.steps, len(predicted) - 1)])
    if expected < 1:
        return bool(run.losses[-1] < expected**PROGRESS * run.losses[0])
    return lazy_error(run, predicted) <= TRIAL_TOLERANCE


def lazy_error(run: TrialRun, curve: np.ndarray) -> float:
    """|ln(actual) − ln(predicted)| / max(|ln(predicted)|, 0.1) for the loss ratio over the trial.

    Log ratios compare decay rates, what a time to target depends on (a 95 % and an 80 %
    drop differ by 2× in rate, not by 19 %); a plan predicted to change the loss little is
    allowed 0.1 × the tolerance in absolute log ratio. `curve` is the frozen-kernel loss curve
    of the same plan (any scale). 0 without a step; inf if the trial's loss left the finite
    numbers.
    """
    if run.steps == 0:
        return 0.0
    predicted = float(curve[min(run.steps, len(curve) - 1)] / curve[0])
    actual = float(run.losses[-1] / run.losses[0])
    if not (math.isfinite(actual) and actual > 0 and predicted > 0):
        return math.inf
    return abs(math.log(actual) - math.log(predicted)) / max(abs(math.log(predicted)), 0.1)


class BatchRun(NamedTuple):
    """One mini-batch trial: the trial-set loss every BATCH_EVAL_EVERY steps and how it ended."""

    losses: np.ndarray  # losses[j]: loss after j · BATCH_EVAL_EVERY steps
    verdict: str  # "reached" the target, "ran" all its steps, "crossed" its start
    factor: float  # its lr as a multiple of the full-batch plan's

    @property
    def steps(self) -> int:
        return (len(self.losses) - 1) * BATCH_EVAL_EVERY

    def steps_to(self, goal: float) -> float:
        """Steps to reach `goal` × the initial loss: the steps it took if it got there, else
        extrapolated at the mean exponential rate to the median of its last three readings
        (one noisy batch moves a single reading); inf if it crossed or did not fall."""
        if self.verdict == "reached":
            return float(self.steps)
        if self.verdict == "crossed" or len(self.losses) < 2 or not goal < 1:
            return math.inf if goal < 1 else 0.0
        tail = self.losses[-3:] if len(self.losses) > 3 else self.losses[1:]
        ratio = float(np.median(tail) / self.losses[0])
        at = self.steps - (len(tail) - 1) * BATCH_EVAL_EVERY / 2  # the median's mean step
        if not (0 < ratio < 1) or goal <= 0:
            return math.inf
        return at * math.log(goal) / math.log(ratio)


def run_batch_trial(model: nn.Module, ell: PerSampleLoss,
                    data: tuple[ModelInputs, Tensor | None],
                    evaluation: tuple[ModelInputs, Tensor | None], cosmology: Cosmology, batch: int,
                    steps: int, goal: float, seed: int, factor: float = 1.0,
                    overshoot: float = 1.0) -> BatchRun:
    """Train a copy at `cosmology` on mini-batches of `batch` of `data` (shuffled without
    replacement, epoch by epoch, from `seed`) for ≤ `steps` steps, reading the loss on
    `evaluation` every BATCH_EVAL_EVERY steps.

    It stops when that loss reaches `goal` × its initial value ("reached") or leaves the
    finite numbers or rises above its initial value times `overshoot` ("crossed": the step is
    too long for this batch, T10 with noise; `overshoot` is the rise the frozen-kernel map
    predicts for the full-batch plan, which the heavy ball near the edge makes by design);
    else "ran".
    """
    inputs, targets = data
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=cosmology.lr, momentum=cosmology.momentum)
    gen = torch.Generator().manual_seed(seed)
    n = len(inputs)
    order = torch.empty(0, dtype=torch.long)
    losses = [_evaluate(net, ell, evaluation)]
    verdict = "ran"
    for step in range(1, steps + 1):
        if len(order) < batch:
            order = torch.randperm(n, generator=gen)
        idx, order = order[:batch].to(inputs.device), order[batch:]
        opt.zero_grad()
        y = None if targets is None else targets[idx]
        ell.training_loss(inputs[idx].call(net), y).backward()
        opt.step()
        if step % BATCH_EVAL_EVERY:
            continue
        losses.append(_evaluate(net, ell, evaluation))
        if not (math.isfinite(losses[-1]) and losses[-1] <= overshoot * losses[0]):
            verdict = "crossed"
            break
        if losses[-1] <= goal * losses[0]:
            verdict = "reached"
            break
    return BatchRun(np.asarray(losses), verdict, factor)


def _evaluate(net: nn.Module, ell: PerSampleLoss,
              at: tuple[ModelInputs, Tensor | None]) -> float:
    with torch.no_grad():
        return float(ell.training_loss(at[0].call(net), at[1]))
