"""Physics-informed hyperparameters: lr and momentum from one NTK and a few measured trials.

The FLRW dual of training (docs/theory.md T4–T10) depends on the optimiser's (η, β) analytically,
so one kernel at initialisation says how the modes will roll. On a probe set of N inputs with C
outputs each, the NTK modes u_k (T7) have curvatures κ_k = m_k² = (λ_k/N) u_kᵀ ℓ'' u_k (T8),
computed by `FLRWDual.mode_curvatures`. Then (derivations in docs/advice.md):

1. **Which modes matter.** The modes carrying `residual_fraction` of the projected residual
   |Uᵀ ∂L/∂f|² (T4, T7; for MSE exactly their share of the reducible loss) are the relevant
   ones; the slowest of them, κ_min, is the slowest mode that must be damped, floored where a
   critically damped mode gets `HORIZON_EFOLDS` (3) e-folds before the predicted time to
   target (or the horizon). The rationale names the active bound.
2. **Heavy ball at a margin.** Polyak's optimum for curvatures in [κ_min, κ_max/s]:
   sqrt(η) = 2/(sqrt κ_max' + sqrt κ_min), sqrt β = (sqrt κ_max' − sqrt κ_min)/(sqrt κ_max' +
   sqrt κ_min) with κ_max' = κ_max/s. In the exact discrete language of T10 it puts κ_min at
   the oscillation threshold η κ_min = (1 − sqrt β)² (critical damping, m = 3H/2, T8) and
   κ_max' at η κ_max' = (1 + sqrt β)² < 2(1 + β), the edge of stability.
3. **The margin s, measured** (:mod:`.margin`). The kernel moves, so the edge does: trials of
   ≤ 30 full-batch steps on ≤ 256 inputs climb down s = 1, 1/2, …, 1/256 until one holds
   (its loss never rises above its start and falls), rerun up to the predicted time to
   target (≤ 120 steps) where it followed the map towards a target beyond it; `safety=`
   fixes s instead.
4. **Mini-batches** (:mod:`.batch`). Gradient noise heats every mode in proportion to the
   effective step ε = η/(1 − β); its floor ε c(B) ν L/4 is kept below half the loss,
   1/ε_B = 1/ε + c(B) ν/2, β kept, with ν measured by mini-batch trials of the lr ladder
   at a reference batch (the fastest to the target sets ν).
5. **Prediction.** The loss curve is the exact discrete heavy-ball map in mode space with the
   kernel frozen (T10, `predict_trajectory(method="discrete")`): exact for a linear model
   with quadratic loss, the lazy-limit prediction otherwise, noise-free for mini-batches. If
   the trial's loss decrease is off by more than `TRIAL_TOLERANCE` (:mod:`.trial`) the kernel
   moved (T4) and `predicted_steps` is None.
6. **Warnings.** When no trial holds, and when the suggestion's own prediction (or, outside the
   lazy regime, the trial's rate) misses the target within the horizon.

Curvature that keeps changing over training is what a single plan cannot follow:
`CosmologyScheduler` (:mod:`.scheduler`) re-reads the curvatures and re-plans.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim._common import preserved, sample_rows
from cosmo_optim.advice.arguments import (
    Options,
    check_arguments,
    check_trainable,
    model_inputs,
)
from cosmo_optim.advice.batch import BatchPlan, batch_plan, batch_steps_to, noise_per_loss
from cosmo_optim.advice.heavy_ball import (
    ModeReadout,
    fixed_point,
    needed_fraction,
    probe_indices,
    read_modes,
    relevant_modes,
    trajectory,
)
from cosmo_optim.advice.margin import (
    TRIAL_ROWS,
    Margin,
    TrialSet,
    measure_margin,
    try_plan,
)
from cosmo_optim.advice.rationale import Decision, rationale, warnings_for
from cosmo_optim.advice.trial import TRIAL_STEPS, TRIAL_TOLERANCE, lazy_error
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual
from cosmo_optim.losses import PerSampleLoss, per_sample_loss
from cosmo_optim.ntk import ModelInputs
from cosmo_optim.optim import CosmoSGD

__all__ = ["Suggestion", "suggest_hyperparameters"]


@dataclass(frozen=True, eq=False)
class Suggestion:
    """Learning rate and momentum chosen from the NTK at initialisation and measured trials
    (T3, T7, T8, T10).

    Build it with `suggest_hyperparameters`. Units: curvatures κ_k = m_k² in 1/time² with
    the continuum time of T2; `lr` and `momentum` are torch SGD's (T1); losses in the units
    of the training loss; steps are optimiser steps.

    Attributes:
        lr, momentum: the suggested η and β; `cosmology` is their de Sitter universe (T3).
        predicted_steps: optimiser steps until the predicted loss reaches `target_loss`, or
            None if not within `horizon_steps` (T10 discrete map, lazy limit) or if the
            trial showed the network is outside the lazy regime (`predictable` False).
        predictable: whether the trial's loss followed the lazy-limit prediction (T4).
        target_loss, initial_loss, horizon_steps: the question asked and the starting loss.
        curvatures: κ_k of every probe mode at initialisation, descending in λ_k (T8).
        softest_curvatures: min(κ_k at initialisation, κ_k where the prediction reaches
            the target), since m_k² follows ℓ'' as the field rolls (T8).
        relevant_modes: indices of the modes carrying `residual_fraction` of |Uᵀ ∂L/∂f|².
        kappa_max: stiffest curvature planned for (max κ_k / safety); kappa_min: slowest
            curvature damped critically.
        active_bound: "residual_fraction", "horizon" or "time_to_target", whichever set
            kappa_min.
        safety: the margin s (stiffest mode planned at κ_max/s), measured by the trials
            unless given.
        margin_trials: one (safety, verdict, steps) per trial, boldest first; verdict is
            "reached" (the target), "held", "crossed" (the loss rose above its start) or
            "stalled".
        edge_growth: κ_max at the end of the chosen trial over κ_max at initialisation (how
            far the edge moved; nan without a trial step).
        noise_per_loss: ν = tr Σ / L at the end of the chosen trial (per-sample gradient
            variance per unit loss, from the kernel's diagonal blocks); a read-out.
        batch_noise_per_loss: the ν the mini-batch rule used, measured by the mini-batch
            trials (nan for full batch).
        batch_trials: one (lr factor, verdict, steps) per mini-batch trial at the reference
            batch, boldest first; verdict "reached", "ran" or "crossed" (empty for full batch).
        lr_batch_factor: η_B/η = ε_B/ε, the mini-batch rule on the effective step η/(1 − β)
            (1.0 for full batch; β is kept).
        stability_margin: max_k η κ_k / 2(1 + β) on the kernel at initialisation (T10).
        warnings: the warnings it raised (also emitted with `warnings.warn`).
        rationale: the decision in plain language.
    """

    lr: float
    momentum: float
    cosmology: Cosmology
    predicted_steps: int | None
    predictable: bool
    target_loss: float
    initial_loss: float
    horizon_steps: int
    curvatures: np.ndarray
    softest_curvatures: np.ndarray
    relevant_modes: np.ndarray
    kappa_max: float
    kappa_min: float
    active_bound: str
    safety: float
    margin_trials: tuple[tuple[float, str, int], ...]
    edge_growth: float
    noise_per_loss: float
    batch_noise_per_loss: float
    batch_trials: tuple[tuple[float, str, int], ...]
    lr_batch_factor: float
    stability_margin: float
    warnings: tuple[str, ...]
    rationale: str
    _dual: FLRWDual = field(repr=False)
    _loss_scale: float = field(repr=False, default=1.0)
    _curve: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def predict_loss(self, steps: int | Iterable[int]) -> Any:
        """Predicted training loss after `steps` optimiser steps (float, or array for many).

        The exact heavy-ball map of T10 iterated in NTK mode space with the kernel frozen at
        initialisation (`predict_trajectory(method="discrete")`), evaluated on the probe set
        and scaled by initial loss / initial probe loss. Full-batch (noise-free) dynamics.
        """
        n = np.asarray(steps)
        if n.size == 0 or not np.issubdtype(n.dtype, np.integer) or int(n.min()) < 0:
            raise ValueError(
                f"Invalid steps: {steps!r}; give a non-negative integer or integers "
                "(optimiser steps from initialisation)."
            )
        curve = self._loss_curve(int(n.max()))
        out = curve[n]
        return float(out) if n.ndim == 0 else out

    def _loss_curve(self, steps: int) -> np.ndarray:
        curve = self._curve.get("loss")
        if curve is None or len(curve) <= steps:
            curve = trajectory(self._dual, max(steps, self.horizon_steps), self._loss_scale)[0]
            self._curve["loss"] = curve
        return curve

    def optimizer(self, params: Iterable[Any], **sgd_kwargs: Any) -> CosmoSGD:
        """A `CosmoSGD` running at the suggested universe; `sgd_kwargs` as for `CosmoSGD`.

        The one way to build it: ``CosmoSGD.from_suggestion(params, suggestion, **sgd_kwargs)``.
        """
        return CosmoSGD.from_suggestion(params, self, **sgd_kwargs)


def _initial_loss(ell: PerSampleLoss, outputs: Tensor, targets: Tensor | None) -> float:
    value = float(ell.training_loss(outputs, targets))
    if not math.isfinite(value):
        raise ValueError(
            f"Invalid loss at initialisation: {value!r}; it must be finite. Check the inputs, "
            "targets and parameters for NaN/inf, and that the targets are in the loss's domain."
        )
    return value


def suggest_hyperparameters(
    model: nn.Module,
    loss: Any,
    inputs: Any,
    targets: Tensor | None = None,
    *,
    horizon_steps: int,
    batch_size: int | None = None,
    target_loss: float | None = None,
    residual_fraction: float = 0.9,
    safety: float | None = None,
    probe_size: int | None = None,
    seed: int = 0,
) -> Suggestion:
    """Choose momentum SGD's lr and momentum from the NTK at initialisation (T7, T8, T10).

    How it decides is in the module docstring: curvatures κ_k = (λ_k/N) ℓ'' of the NTK modes
    (T8), the slowest relevant one critically damped and the stiffest one at the edge of a
    measured margin (Polyak's heavy-ball optimum, T10), the effective step η/(1 − β) lowered
    by the gradient noise for mini-batches, and the loss curve predicted by the discrete mode
    map (T10). Cost (itemised in docs/advice.md): two forward passes on `inputs`, two
    output-space NTKs and eigendecompositions on the probe set (O((N·C)³)), the frozen-kernel
    map per margin tried, ≤ 11 full-batch trials on ≤ 256 inputs (≤ 30 steps each, one
    ≤ 120; each stops at its first loss above its start) and, with `batch_size`, ≤ 8
    mini-batch trials of ≤ 120 steps of 32 inputs.

    Args:
        model: the network at initialisation (not modified).
        loss: the training loss: a torch loss module (MSELoss, CrossEntropyLoss, ...),
            `PolynomialPotentialLoss`, or a per-sample callable (see `per_sample_loss`).
        inputs: the N training inputs as the model takes them: a tensor, a tuple of
            positional arguments, a dict of keyword arguments (a Hugging Face batch without
            its labels) or a `cosmo_optim.ntk.ModelInputs`; the model returns one row of
            outputs per sample. `targets`: the N targets, if the loss needs them.
        horizon_steps: how many optimiser steps you will train for (≥ 1).
        batch_size: samples per step, or None for full-batch training.
        target_loss: the loss to reach (`predicted_steps` counts to it); default 10% of the initial.
        residual_fraction: share of |Uᵀ ∂L/∂f|² the relevant modes must carry, in (0, 1];
            at least 1 − target_loss/initial loss, the share that must go to reach the target.
        safety: None (default) to measure the margin by trials, or a margin in (0, 1]: plan
            for a stiffest curvature 1/safety times the measured one (1: the exact optimum).
        probe_size: inputs in the NTK probe set; default all, or a seeded random subset of
            MAX_PROBE_ROWS // C inputs when larger.
        seed: seed of the probe subset and of the trial set (≤ 256 inputs).

    Returns:
        A `Suggestion` (lr, momentum, cosmology, predicted_steps, predictable, safety,
        warnings, rationale, predict_loss, optimizer). The model, its buffers, `.grad`,
        train/eval flags and the torch/NumPy/Python random states are left as they were.

    Raises:
        ValueError: a bad argument, input or output, no trainable parameter, a non-finite
            initial loss; the message names the value and the fix.

    Warns:
        UserWarning: no trial made progress (the suggestion may not train), or the
            suggestion's own prediction misses `target_loss` within `horizon_steps`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model, x = nn.Linear(3, 1), torch.randn(64, 3)
        >>> y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        >>> s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=100)
        >>> s.safety, s.predicted_steps is not None, s.predict_loss(0) > s.predict_loss(100)
        (1.0, True, True)
        >>> opt = s.optimizer(model.parameters())  # CosmoSGD at (s.lr, s.momentum)
    """
    opts = check_arguments(horizon_steps, batch_size, target_loss, residual_fraction, safety,
                           probe_size, seed)
    x = model_inputs(inputs, targets)
    check_trainable(model)
    ell = per_sample_loss(loss)
    probe, decision, fraction = _plan(model, ell, x, targets, opts)
    text = rationale(probe.read, decision, fraction, probe.initial, horizon_steps, batch_size,
                     probe.num_inputs)
    notes = warnings_for(decision, horizon_steps, batch_size)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return _suggestion(probe, decision, horizon_steps, notes, text)


def _plan(model: nn.Module, ell: PerSampleLoss, x: ModelInputs, targets: Tensor | None,
          opts: Options) -> tuple[_Probe, Decision, float]:
    """The probe, the margin's ladder, the mini-batch plan and the decision, on copies of the
    model with its state preserved; also the residual fraction the relevant modes carry."""
    first = next(p for p in model.parameters() if p.requires_grad)
    with preserved(model, first.device):
        probe = _read_probe(model, ell, x, targets, opts.probe_size, opts.seed)
        target = 0.1 * probe.initial if opts.target_loss is None else opts.target_loss
        fraction = needed_fraction(opts.residual_fraction, target, probe.initial)
        relevant = relevant_modes(probe.read.curvatures, probe.read.dual.eigenvalues,
                                  probe.read.residual, fraction)
        trials = _trial_set(x, targets, target / probe.initial, opts.seed, probe.initial)
        margin = _margin(model, ell, probe, relevant, trials, opts.horizon_steps, target,
                         opts.safety)
        batch = batch_plan(model, ell, (x, targets), (trials.inputs, trials.targets),
                           trials.goal, margin.rung.found.plan.cosmology,
                           margin.rung.found.curve, opts.batch_size, opts.horizon_steps,
                           opts.seed)
        decision = _decide(ell, probe, relevant, trials, margin, opts.safety is None,
                           opts.horizon_steps, batch)
    return probe, decision, fraction


class _Probe(NamedTuple):
    """The model at initialisation: its training loss on all inputs and its probe set."""

    initial: float
    num_inputs: int
    inputs: ModelInputs  # the probe subset, and its targets
    targets: Tensor | None
    read: ModeReadout  # the NTK's modes there (T7, T8)
    scale: float  # initial loss / initial probe loss


def _read_probe(model: nn.Module, ell: PerSampleLoss, x: ModelInputs, targets: Tensor | None,
                probe_size: int | None, seed: int) -> _Probe:
    """One forward on all inputs `x`, the probe subset, and the NTK modes there (T7, T8)."""
    with torch.no_grad():
        outputs = sample_rows(x.call(model), len(x))
    initial = _initial_loss(ell, outputs, targets)
    num_inputs, num_outputs = int(outputs.shape[0]), int(outputs[0].numel())
    idx = probe_indices(num_inputs, num_outputs, probe_size, seed)
    probe_y = None if targets is None else targets[idx]
    read = read_modes(model, ell, x[idx], outputs[idx], probe_y)
    _check_curvature(read.curvatures)
    probe_initial = float(read.values.mean())
    scale = initial / probe_initial if probe_initial > 0 else 1.0
    return _Probe(initial, num_inputs, x[idx], probe_y, read, scale)


def _trial_set(x: ModelInputs, targets: Tensor | None, goal: float, seed: int,
               initial: float) -> TrialSet:
    """All inputs, or a seeded subset of TRIAL_ROWS of them."""
    n = len(x)
    if n <= TRIAL_ROWS:
        return TrialSet(x, targets, goal, x, targets, initial)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:TRIAL_ROWS]
    idx = idx.sort().values
    return TrialSet(x[idx], None if targets is None else targets[idx], goal, x,
                    targets, initial)


def _margin(model: nn.Module, ell: PerSampleLoss, probe: _Probe, relevant: Tensor,
            trials: TrialSet, horizon_steps: int, target: float,
            safety: float | None) -> Margin:
    """The ladder of trials (`safety` None), or the one plan at the given margin and its trial."""
    if safety is None:
        return measure_margin(model, ell, probe.read, relevant, trials, horizon_steps, target,
                              probe.scale)
    found = fixed_point(probe.read, relevant, safety, horizon_steps, target, probe.scale)
    rung = try_plan(model, ell, found, trials, safety, min(TRIAL_STEPS, horizon_steps))
    return Margin(rung, (rung,))


def _decide(ell: PerSampleLoss, probe: _Probe, relevant: Tensor, trials: TrialSet,
            margin: Margin, measured: bool, horizon_steps: int,
            batch: BatchPlan | None) -> Decision:
    """The kernel after the chosen trial (edge growth, noise), the mini-batch plan and the
    prediction of the suggestion."""
    rung = margin.rung
    target = trials.goal * probe.initial
    after = probe.read
    if rung.trial.steps:
        with torch.no_grad():
            outputs = probe.inputs.call(rung.trial.net)
        after = read_modes(rung.trial.net, ell, probe.inputs, outputs, probe.targets)
    growth = (float(after.curvatures.max() / probe.read.curvatures.max()) if rung.trial.steps
              else math.nan)
    nu = noise_per_loss(after)
    full = rung.found.plan.cosmology
    chosen = full if batch is None else batch.cosmology
    curve = rung.found.curve
    if chosen != full or (len(curve) <= horizon_steps and rung.found.predicted is None):
        curve = trajectory(probe.read.dual.replace(cosmology=chosen), horizon_steps,
                           probe.scale)[0]
    hits = np.flatnonzero(curve <= target)
    predicted = int(hits[0]) if hits.size else None
    predictable = lazy_error(rung.trial, rung.found.curve) <= TRIAL_TOLERANCE
    factor = chosen.lr / full.lr
    rate = trials.steps_to(ell, rung.trial)  # full batch: the chosen trial's
    if batch is not None:
        rate = batch_steps_to(batch, trials.goal, probe.read.dual, curve, horizon_steps,
                              probe.scale)
    return Decision(relevant, target, margin, measured, growth, nu, chosen, factor, curve,
                    predicted, predictable, rate, batch)


def _suggestion(probe: _Probe, d: Decision, horizon_steps: int, notes: tuple[str, ...],
                text: str) -> Suggestion:
    """The `Suggestion`: the plan, and a time to target only if the trial followed the map."""
    rung = d.margin.rung
    plan = rung.found.plan
    dual = probe.read.dual.replace(cosmology=d.cosmology)
    return Suggestion(
        lr=d.cosmology.lr, momentum=d.cosmology.momentum, cosmology=d.cosmology,
        predicted_steps=d.predicted if d.predictable else None, predictable=d.predictable,
        target_loss=d.target, initial_loss=probe.initial, horizon_steps=horizon_steps,
        curvatures=probe.read.curvatures.numpy(), softest_curvatures=rung.found.low.numpy(),
        relevant_modes=d.relevant.numpy(), kappa_max=plan.kappa_max, kappa_min=plan.kappa_min,
        active_bound=plan.active, safety=rung.safety,
        margin_trials=tuple((r.safety, r.trial.verdict, r.trial.steps) for r in d.margin.rungs),
        edge_growth=d.edge_growth, noise_per_loss=d.noise, lr_batch_factor=d.factor,
        batch_noise_per_loss=math.nan if d.batch is None else d.batch.noise,
        batch_trials=() if d.batch is None else tuple(
            (r.factor, r.verdict, r.steps) for r in d.batch.runs),
        stability_margin=dual.stability_margin, warnings=notes, rationale=text,
        _dual=dual, _loss_scale=probe.scale, _curve={"loss": d.curve},
    )


def _check_curvature(kappa: Tensor) -> None:
    measured_max = float(kappa.max())
    if not measured_max > 0:
        raise ValueError(
            f"No NTK mode has positive curvature (max κ_k = {measured_max!r}): the loss is flat "
            "or concave at the initial outputs, so no stable step size follows from T10. "
            "Check the loss and the model's outputs."
        )
