"""The mini-batch rule on the effective step (docs/advice.md "Mini-batches", T1, T2, T10).

Momentum SGD moves a slow mode by the effective step ε = η/(1 − β) per step (T2: the
friction (1 − β)/√η sets the terminal velocity), and gradient noise heats every mode in
proportion to ε: for the heavy ball on a quadratic with mini-batch gradient covariance Σ_B the
stationary excess loss is ε tr Σ_B / 4 well inside the edge of stability (derived in
docs/advice.md). Asking that noise floor to stay below a fraction `NOISE_FLOOR_FRACTION` (γ) of
the loss, with tr Σ ∝ loss (ν = tr Σ / L), gives (A3)

    1/ε_B = 1/ε + c(B) ν / (4γ),        c(B) = (N − B) / ((N − 1) B),

ε the full-batch plan's effective step. The lr is scaled and β kept, so ε_B/ε = η_B/η, and a
smaller batch never gets a larger effective step (c(B) falls with B, ν ≥ 0).

ν is measured by mini-batch trials (`batch_plan`): the full-batch plan's lr times 1, 1/2,
1/4, … at the reference batch `REFERENCE_BATCH`, each ≤ `BATCH_TRIAL_STEPS` steps from
initialisation (:mod:`.trial`), climbing down while the time to target they measure shortens;
the ν for which (A3) gives the fastest of them is the data's and the model's own, whatever
batch size is asked about, and (A3) carries it to that batch size. The kernel's ν
(`noise_per_loss`) is reported beside it; it misjudged the best step 2–15× both ways.

Cost: per rung, ≤ BATCH_TRIAL_STEPS steps on `REFERENCE_BATCH` inputs and one forward on the
trial set every BATCH_EVAL_EVERY steps (a rung that rises above its start stops there).
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim.advice.heavy_ball import ModeReadout, trajectory
from cosmo_optim.advice.trial import (
    BATCH_EVAL_EVERY,
    BATCH_TRIAL_STEPS,
    CROSSING_SLACK,
    BatchRun,
    run_batch_trial,
)
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual
from cosmo_optim.losses import PerSampleLoss
from cosmo_optim.ntk import ModelInputs
from cosmo_optim.spectrum import flat_kernel

__all__ = [
    "BATCH_FACTORS", "NOISE_FLOOR_FRACTION", "REFERENCE_BATCH", "BatchPlan", "batch_cosmology",
    "batch_plan", "batch_steps_to", "measured_noise", "noise_coefficient", "noise_floor",
    "noise_per_loss", "reference_batch", "slowdown",
]

#: The noise floor ε tr Σ_B / 4 may reach this fraction of the target loss.
NOISE_FLOOR_FRACTION: Final = 0.5
#: The mini-batch trials' lr, as multiples of the full-batch plan's (β kept), boldest first.
BATCH_FACTORS: Final = tuple(0.5**k for k in range(8))
#: The batch size of the mini-batch trials (Keras's default batch_size), at most half the
#: inputs, whatever batch size is asked about.
REFERENCE_BATCH: Final = 32


def noise_per_loss(read: ModeReadout) -> float:
    """ν = tr Σ / L: the per-sample gradient variance per unit of loss, from the kernel (T4).

    |g_i|² = ℓ'_iᵀ Θ_ii ℓ'_i (the kernel's diagonal blocks), |G|² = ℓ'ᵀ Θ ℓ' / N², tr Σ the
    population variance mean_i |g_i|² − |G|², L the mean per-sample loss on the probe.
    Units: loss per squared parameter, the inverse of an effective step.
    """
    grad = read.grad.reshape(read.grad.shape[0], -1)
    n = grad.shape[0]
    flat = flat_kernel(read.kernel)
    g = grad.to(flat.dtype)
    mean_sq = float(g.reshape(-1) @ flat @ g.reshape(-1)) / n**2  # |G|²
    blocks = read.kernel.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # Θ_ii, (N, C, C)
    per_sample = torch.einsum("na,nab,nb->n", g, blocks.to(flat.dtype), g)
    trace_sigma = max(float(per_sample.mean()) - mean_sq, 0.0)
    loss = float(read.values.mean())
    return trace_sigma / loss if loss > 0 else math.inf


def noise_coefficient(batch_size: int | None, num_inputs: int) -> float:
    """c(B) = (N − B)/((N − 1) B): Σ_B = c(B) Σ for B of N inputs drawn without replacement.

    0 for full batch (None or B ≥ N)."""
    if batch_size is None or batch_size >= num_inputs:
        return 0.0
    return (num_inputs - batch_size) / ((num_inputs - 1) * batch_size)


def noise_floor(effective_step: float, trace_sigma: float, batch_size: int | None,
                num_inputs: int) -> float:
    """F = ε c(B) tr Σ / 4: the heavy ball's stationary excess loss from mini-batch noise.

    Exact for a quadratic with curvatures κ ≪ 2(1 + β)/η and constant noise covariance Σ per
    sample (docs/advice.md derives it from the stationary variance of T1's recursion):
    every mode holds ε c(B) s_k / 4 whatever its curvature, s_k its share of tr Σ.
    """
    return effective_step * noise_coefficient(batch_size, num_inputs) * trace_sigma / 4.0


def batch_cosmology(full: Cosmology, nu: float, batch_size: int | None, num_inputs: int,
                    floor_fraction: float = NOISE_FLOOR_FRACTION) -> Cosmology:
    """The mini-batch universe: the effective step lowered by the noise floor, β kept (T1, T2).

    ε_B = ε / (1 + F(ε)/(γ L)) with F the `noise_floor` of the full-batch plan's effective step
    ε = η/(1 − β), tr Σ = ν L, γ = `floor_fraction`: i.e. 1/ε_B = 1/ε + c(B) ν/(4γ), whose
    floor F(ε_B) < γ L. Returns (η ε_B/ε, β); full batch (c = 0) returns `full` unchanged.
    """
    effective = full.lr / (1.0 - full.momentum)
    per_loss = noise_floor(effective, nu, batch_size, num_inputs)  # F(ε)/L
    if per_loss == 0.0:
        return full
    return Cosmology(full.lr / (1.0 + per_loss / floor_fraction), full.momentum)


def slowdown(full: np.ndarray, batch: np.ndarray, steps: int, factor: float) -> float:
    """How much longer the mini-batch plan takes than the trialled full-batch one, by the
    frozen-kernel map (T10): the steps its curve needs to reach the ratio the full-batch curve
    reaches in the trial's `steps` (oscillating modes keep their √β per step, overdamped ones
    slow by the lr factor), or 1/factor if it does not get there."""
    if factor == 1.0 or steps == 0:
        return 1.0
    ratio = full[min(steps, len(full) - 1)] / full[0]
    hits = np.flatnonzero(batch / batch[0] <= ratio)
    return hits[0] / steps if hits.size and ratio < 1 else 1.0 / factor


def reference_batch(num_inputs: int) -> int:
    """The mini-batch trials' batch size: REFERENCE_BATCH, at most half the inputs."""
    return max(1, min(REFERENCE_BATCH, num_inputs // 2))


def measured_noise(full: Cosmology, factor: float, batch_size: int, num_inputs: int,
                   floor_fraction: float = NOISE_FLOOR_FRACTION) -> float:
    """ν for which (A3) lowers the effective step of `full` by `factor` at `batch_size`:
    ν = 4γ (1/factor − 1) / (c(B) ε). Units of `noise_per_loss`; 0 for factor 1."""
    c = noise_coefficient(batch_size, num_inputs)
    if factor >= 1.0 or c == 0.0:
        return 0.0
    effective = full.lr / (1.0 - full.momentum)
    return 4.0 * floor_fraction * (1.0 / factor - 1.0) / (c * effective)


class BatchPlan(NamedTuple):
    """The mini-batch rule with ν measured by trials: the universe for the batch size asked
    about, η_B/η, the measured ν, the reference batch, every trial (boldest first) and the
    fastest one."""

    cosmology: Cosmology
    factor: float
    noise: float
    reference: int
    runs: tuple[BatchRun, ...]
    chosen: BatchRun


def batch_plan(model: nn.Module, ell: PerSampleLoss, data: tuple[ModelInputs, Tensor | None],
               evaluation: tuple[ModelInputs, Tensor | None], goal: float, full: Cosmology,
               curve: np.ndarray, batch_size: int | None, horizon_steps: int,
               seed: int) -> BatchPlan | None:
    """The mini-batch universe for `batch_size` from trials at the reference batch (A3), or
    None for full batch.

    Trials at η·f, f = 1, 1/2, …, run on mini-batches of the reference batch drawn from all
    of `data` (the same order for every f), read on `evaluation`; a trial crosses where its
    loss rises above the overshoot of `curve`, the full-batch plan's frozen-kernel loss curve
    (T10). The ladder stops at the first f slower to `goal` than the fastest so far (a step
    below the optimum); of equally fast ones (the loss is read every BATCH_EVAL_EVERY steps) the
    smallest step, whose noise floor is lowest, is kept. The fastest
    trial's f gives ν (`measured_noise`), and (A3) gives the universe for `batch_size`: the
    fastest f itself when `batch_size` is the reference batch.
    """
    n = len(data[0])
    if noise_coefficient(batch_size, n) == 0.0:
        return None
    reference = reference_batch(n)
    steps = max(BATCH_EVAL_EVERY, min(BATCH_TRIAL_STEPS, horizon_steps))
    overshoot = CROSSING_SLACK * max(1.0, float(np.max(curve[: steps + 1] / curve[0])))
    runs: list[BatchRun] = []
    best, fastest = None, math.inf
    for factor in BATCH_FACTORS:
        plan = Cosmology(full.lr * factor, full.momentum)
        run = run_batch_trial(model, ell, data, evaluation, plan, reference, steps, goal, seed,
                              factor, overshoot)
        runs.append(run)
        score = run.steps_to(goal)
        if best is not None and score > fastest:
            break
        best, fastest = run, score
    assert best is not None
    nu = measured_noise(full, best.factor, reference, n)
    chosen = batch_cosmology(full, nu, batch_size, n)
    return BatchPlan(chosen, chosen.lr / full.lr, nu, reference, tuple(runs), best)


def batch_steps_to(plan: BatchPlan, goal: float, dual: FLRWDual, curve: np.ndarray,
                   horizon_steps: int, scale: float) -> float:
    """The mini-batch suggestion's time to `goal` as measured: the fastest trial's, scaled by
    the frozen-kernel map's `slowdown` (T10) from its lr to the suggested one where the batch
    size is not the reference. `dual` is the probe's, `curve` the suggestion's map curve."""
    fastest = plan.chosen
    rate = fastest.steps_to(goal)
    if plan.factor == fastest.factor or not math.isfinite(rate):
        return rate
    c = plan.cosmology
    ref = Cosmology(c.lr * fastest.factor / plan.factor, c.momentum)
    ref_curve = trajectory(dual.replace(cosmology=ref), horizon_steps, scale)[0]
    return rate * slowdown(ref_curve, curve, fastest.steps, plan.factor / fastest.factor)
