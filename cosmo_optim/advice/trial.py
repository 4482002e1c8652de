"""The trial of a plan (docs/theory.md T4, T10): a copy of the model trained full batch on the
probe set at the suggested (η, β) for a few steps, its loss decrease compared with the
frozen-kernel prediction. Off by more than `TRIAL_TOLERANCE`, the network is outside the lazy
regime and no time to target is predicted.
"""

from __future__ import annotations

import copy
import math
from typing import Final, NamedTuple

import torch
from torch import Tensor, nn

from cosmo_optim.advice.heavy_ball import Search
from cosmo_optim.losses import PerSampleLoss

__all__ = ["TRIAL_FRACTION", "TRIAL_TOLERANCE", "Trial", "run_trial"]

#: The trial's loss decrease may differ from the predicted one by this fraction (lazy limit).
TRIAL_TOLERANCE: Final = 0.25
#: The trial costs at most horizon_steps / this many probe-set steps (≤ 4 % of training).
TRIAL_FRACTION: Final = 25


class Trial(NamedTuple):
    steps: int
    predicted_drop: float  # predicted probe-loss decrease over the trial
    actual_drop: float
    error: float  # |actual − predicted| / |predicted| (0 when there was no trial)


def run_trial(model: nn.Module, ell: PerSampleLoss, inputs: Tensor, targets: Tensor | None,
              found: Search, horizon_steps: int) -> Trial:
    """Train a copy on the probe set at the plan for a few steps; compare with the map (T4).

    Over a quarter of the predicted time to target (at most horizon_steps/TRIAL_FRACTION
    steps), the probe loss must drop as the frozen-kernel prediction says, within
    TRIAL_TOLERANCE; otherwise the kernel moved and no prediction is printed.
    """
    steps = min((found.predicted or horizon_steps) // 4, horizon_steps // TRIAL_FRACTION)
    if steps < 1:
        return Trial(0, math.nan, math.nan, 0.0)
    curve = found.curve / found.curve[0]  # probe-loss ratios (the scale cancels)
    net = copy.deepcopy(model)
    c = found.plan.cosmology
    opt = torch.optim.SGD(net.parameters(), lr=c.lr, momentum=c.momentum)
    losses = []
    for _ in range(steps + 1):
        opt.zero_grad()
        value = ell.training_loss(net(inputs), targets)
        losses.append(float(value.detach()))
        if len(losses) <= steps:
            value.backward()
            opt.step()
    predicted = 1.0 - float(curve[steps])
    actual = 1.0 - losses[-1] / losses[0] if losses[0] > 0 else 0.0
    error = abs(actual - predicted) / abs(predicted) if predicted != 0 else math.inf
    return Trial(steps, predicted, actual, error if math.isfinite(actual) else math.inf)
