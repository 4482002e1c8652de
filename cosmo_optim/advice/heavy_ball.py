"""The heavy-ball plan from NTK mode curvatures, shared by the one-shot advice and the
re-planning scheduler (docs/theory.md T4, T7, T8, T10). Internal to the advice package:
:mod:`.suggest` and :mod:`.scheduler` import from here; the rationale lives in
:mod:`.suggest`'s module docstring.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual, predict_trajectory
from cosmo_optim.losses import PerSampleLoss, loss_derivatives
from cosmo_optim.ntk import ModelInputs, empirical_ntk

__all__ = [
    "MAX_PROBE_ROWS",
    "HeavyBallPlan",
    "ModeReadout",
    "Search",
    "extend",
    "fixed_point",
    "needed_fraction",
    "plan",
    "plan_for",
    "polyak_lr",
    "probe_indices",
    "read_modes",
    "relevant_modes",
    "roll",
    "trajectory",
]

#: Default probe: as many inputs as keep the output-space kernel at N·C ≤ this many rows.
MAX_PROBE_ROWS: Final = 400
#: A mode is worth damping if, critically damped, it gets this many e-folds in the horizon.
HORIZON_EFOLDS: Final = 3.0
#: At most this many rounds of plan → predicted time to target → plan.
PLAN_ITERATIONS: Final = 4
#: Modes with λ_k below this fraction of λ_1 are numerically in the kernel's null space.
NULL_RTOL: Final = 1e-10
#: The map runs this many steps first, then twice as many, until the target or the horizon.
FIRST_STEPS: Final = 32


class ModeReadout(NamedTuple):
    """One NTK read-out on a probe set: the dual (at η = 1, β = 0), its full kernel, the
    per-sample losses and ℓ' there, the projected residual Uᵀ ∂L/∂f and κ_k (T4, T7, T8)."""

    dual: FLRWDual
    kernel: Tensor
    values: Tensor
    grad: Tensor
    residual: Tensor
    curvatures: Tensor


def probe_indices(num_inputs: int, num_outputs: int, probe_size: int | None, seed: int) -> Tensor:
    """Indices of the probe set: all inputs, or a seeded random subset (N·C ≤ MAX_PROBE_ROWS)."""
    size = max(1, MAX_PROBE_ROWS // num_outputs) if probe_size is None else probe_size
    if size >= num_inputs:
        return torch.arange(num_inputs)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_inputs, generator=gen)[:size].sort().values


def read_modes(model: nn.Module, ell: PerSampleLoss, inputs: Tensor | ModelInputs,
               outputs: Tensor,
               targets: Tensor | None) -> ModeReadout:
    """The float64 output-space NTK on `inputs` (outputs already computed) and its modes."""
    f = outputs.detach().to(torch.float64)
    y = targets
    if y is not None and y.is_floating_point():
        y = y.to(torch.float64)
    kernel = empirical_ntk(model, inputs, output="full", dtype=torch.float64)
    dual = FLRWDual.from_kernel(kernel, ell, f, targets=y, cosmology=Cosmology(1.0, 0.0))
    values, grad, _ = loss_derivatives(ell, f, y, order=1)
    residual = dual.eigenvectors.T @ (grad.reshape(-1) / dual.num_samples)  # Uᵀ ∂L/∂f
    return ModeReadout(dual, kernel, values, grad, residual, dual.mode_curvatures)


def needed_fraction(fraction: float, target: float | None, loss: float) -> float:
    """The share of |Uᵀ ∂L/∂f|² the relevant modes must carry: `fraction`, and at least the
    share of the loss that must go to reach `target` from `loss`, 1 − target/loss (for MSE the
    projected residual of a mode is its share of the loss, T4/T7)."""
    if target is None or not loss > 0:
        return fraction
    return max(fraction, min(1.0, 1.0 - target / loss))


def relevant_modes(curvatures: Tensor, eigenvalues: Tensor, residual: Tensor,
                   fraction: float) -> Tensor:
    """Fewest reachable modes whose |Uᵀ ∂L/∂f|² adds up to `fraction` of the reachable total."""
    reachable = (eigenvalues > NULL_RTOL * eigenvalues[0]) & (curvatures > 0)
    weight = torch.where(reachable, residual.pow(2), torch.zeros_like(residual))
    total = float(weight.sum())
    if not total > 0:
        raise ValueError(
            "The projected residual |Uᵀ ∂L/∂f|² is zero on every trainable mode: the "
            "outputs already minimise the loss on the probe set, so there is nothing to tune. "
            "Check the targets, or pass a larger probe_size."
        )
    order = torch.argsort(weight, descending=True)
    cumulative = torch.cumsum(weight[order], 0)
    count = int(torch.searchsorted(cumulative, fraction * total * (1 - 1e-12))) + 1
    return order[: min(count, int(reachable.sum()))].sort().values


def polyak_lr(kappa_max: float, kappa_min: float) -> float:
    """Heavy-ball optimum (Polyak) for curvatures in [κ_min, κ_max]: η = 4/(√κ_max + √κ_min)².

    Its momentum, ((√κ_max − √κ_min)/(√κ_max + √κ_min))², is (1 − √(η κ_min))²: κ_min sits
    on the critical damping of T10, which is how `plan` derives β after scaling η.
    """
    return 4.0 / (math.sqrt(kappa_max) + math.sqrt(kappa_min)) ** 2


class HeavyBallPlan(NamedTuple):
    cosmology: Cosmology
    kappa_max: float
    kappa_min: float
    fraction_min: float  # slowest relevant curvature
    need_min: float  # slowest curvature that can move within the steps needed
    active: str


def plan(high: Tensor, low: Tensor, relevant: Tensor, safety: float, need: int,
         is_horizon: bool) -> HeavyBallPlan:
    """Full-batch (η, β) for curvatures `high` (stiffest on the path) and `low` (softest) (T8, T10).

    κ_max = max(high)/safety over all modes; κ_min = the slowest relevant curvature, floored
    where a critically damped mode gets HORIZON_EFOLDS e-folds within `need` steps: with
    Polyak's parameters sqrt(η κ_min) = 2/(sqrt Q + 1), so sqrt Q ≤ 2 need/E − 1. Mini-batches
    lower the effective step afterwards (:mod:`.batch`).
    """
    kappa_max = float(high.max()) / safety
    fraction_min = float(low[relevant].min())
    need_min = kappa_max / max(2.0 * need / HORIZON_EFOLDS - 1.0, 1.0) ** 2
    kappa_min = min(max(fraction_min, need_min), kappa_max)
    if fraction_min >= need_min:
        active = "residual_fraction"
    else:
        active = "horizon" if is_horizon else "time_to_target"
    lr = polyak_lr(kappa_max, kappa_min)
    momentum = (1.0 - math.sqrt(lr * kappa_min)) ** 2  # κ_min critically damped (T10)
    return HeavyBallPlan(Cosmology(lr, momentum), kappa_max, kappa_min, fraction_min, need_min,
                         active)


def trajectory(dual: FLRWDual, steps: int, scale: float) -> tuple[np.ndarray, Tensor | None]:
    """Loss at n = 0 … steps and the outputs, under the discrete heavy-ball map (T10).

    The kernel is frozen (lazy limit); the outputs are None if the map left every finite
    value (the linearisation then predicts divergence).
    """
    try:
        modes = predict_trajectory(dual, steps, method="discrete").outputs
    except ValueError:  # the map diverged: η κ ≥ 2(1 + β) somewhere along the way
        return np.full(steps + 1, np.inf), None
    assert modes is not None
    n = dual.num_samples
    outputs = torch.from_numpy(modes).reshape(steps + 1, *dual.outputs.shape)
    y = dual.targets
    if y is not None:
        y = y.repeat(steps + 1, *([1] * (y.dim() - 1)))
    with torch.no_grad():
        flat = outputs.reshape((steps + 1) * n, *dual.outputs.shape[1:])
        values = dual.loss.per_sample(flat, y).reshape(steps + 1, n).mean(dim=1)
    return scale * values.numpy(), outputs


def roll(dual: FLRWDual, horizon_steps: int, scale: float,
         target: float) -> tuple[np.ndarray, Tensor | None]:
    """`trajectory` up to its first loss at or below `target`, or the horizon: FIRST_STEPS
    steps, then doubling, each continued from where the last ended (the curve past the target
    is not needed to plan, and costs most of the map)."""
    curve, path = trajectory(dual, min(FIRST_STEPS, horizon_steps), scale)
    while path is not None and len(curve) <= horizon_steps and not (curve <= target).any():
        curve, path = extend(dual, curve, path, min(horizon_steps, 2 * (len(curve) - 1)), scale)
    return curve, path


def extend(dual: FLRWDual, curve: np.ndarray, path: Tensor, steps: int,
           scale: float) -> tuple[np.ndarray, Tensor | None]:
    """The loss curve and outputs of `trajectory` continued to `steps` steps from their end:
    the map started at the last outputs with the backward-difference velocity there (T10)."""
    done = len(curve) - 1
    if steps <= done:
        return curve, path
    last, before = path[-1], path[-2] if done else path[-1]
    start = dual.replace(outputs=last.to(dual.outputs.dtype),
                         velocity=((last - before) / dual.cosmology.time_step).to(
                             dual.outputs.dtype))
    more, tail = trajectory(start, steps - done, scale)
    curve = np.concatenate([curve, more[1:]])
    return curve, None if tail is None else torch.cat([path, tail[1:]])


class Search(NamedTuple):
    """The fixed point of plan → predicted time to target → plan."""

    plan: HeavyBallPlan
    dual: FLRWDual
    curve: np.ndarray
    predicted: int | None
    need: int
    low: Tensor


def fixed_point(read: ModeReadout, relevant: Tensor, safety: float, horizon_steps: int,
                target: float, scale: float, need: int | None = None) -> Search:
    """The plan whose predicted time to target is the time it damps for (≤ PLAN_ITERATIONS rounds).

    The modes needed are those that must move before the target is reached, with their
    masses anywhere on the predicted roll (T8: m_k² follows ℓ'' along the path), so the plan
    depends on its own time to target. A plan damping for `need` steps either arrives within
    them (consistent) or not; the rounds bracket the smallest consistent `need`, jumping to the
    predicted time when it lies inside the bracket and bisecting (geometrically) otherwise,
    since a plan for a short time lowers β and can arrive later than one for a long time.
    Returns the consistent plan with the smallest `need`, or the last plan if none is.
    `need` is the first guess (default the horizon).
    """
    lower, upper = 0, horizon_steps + 1  # plans for ≤ lower steps miss; for ≥ upper arrive
    need = horizon_steps if need is None else min(max(int(need), 1), horizon_steps)
    best, found, low, high = None, None, read.curvatures, read.curvatures
    for _ in range(PLAN_ITERATIONS):
        found, path = _search(read, relevant, safety, horizon_steps, target, scale, need,
                              low, high)
        arrives = found.predicted is not None and found.predicted <= need
        if arrives and need < upper:
            upper, best = need, found
        elif not arrives:
            lower = max(lower, need)
        guess = horizon_steps if found.predicted is None else max(found.predicted, 1)
        if not lower < guess < upper:
            guess = int(math.sqrt(max(lower, 1) * min(upper, horizon_steps)))
        if guess == need or not lower < guess < upper or path is None:
            break
        need = guess
        longer = extend(found.dual, found.curve, path, need, scale)[1]
        path = path if longer is None else longer
        at_need = found.dual.replace(outputs=path[min(need, len(path) - 1)].to(
            read.dual.outputs.dtype)).mode_curvatures
        low = torch.minimum(read.curvatures, at_need)
        high = torch.maximum(read.curvatures, at_need)
    assert found is not None
    return found if best is None else best


def _search(read: ModeReadout, relevant: Tensor, safety: float, horizon_steps: int,
            target: float, scale: float, need: int, low: Tensor,
            high: Tensor) -> tuple[Search, Tensor | None]:
    """One round: the plan damping for `need` steps and its frozen-kernel prediction (T10),
    up to the target or the horizon (`roll`)."""
    chosen = plan(high, low, relevant, safety, need, need == horizon_steps)
    planned = read.dual.replace(cosmology=chosen.cosmology)
    curve, path = roll(planned, horizon_steps, scale, target)
    hits = np.flatnonzero(curve <= target)
    predicted = int(hits[0]) if hits.size else None
    return Search(chosen, planned, curve, predicted, need, low), path



def plan_for(read: ModeReadout, relevant: Tensor, safety: float, need: int, horizon_steps: int,
             target: float, scale: float) -> Search:
    """The plan damping for a time to target `need` known from elsewhere (a trial), with its
    frozen-kernel prediction: one round of `fixed_point`, not iterated on the map's own time."""
    need = min(max(int(need), 1), horizon_steps)
    return _search(read, relevant, safety, horizon_steps, target, scale, need, read.curvatures,
                   read.curvatures)[0]
