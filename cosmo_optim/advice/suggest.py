"""Physics-informed hyperparameters: lr and momentum from one NTK, without a grid search.

The FLRW dual of training (docs/theory.md T4–T10) depends on the optimiser's (η, β) analytically,
so one kernel at initialisation is enough to choose them. On a probe set of N inputs with C
outputs each, the NTK modes u_k (T7) have curvatures κ_k = m_k² = (λ_k/N) u_kᵀ ℓ'' u_k (T8),
computed by `FLRWDual.mode_curvatures`. Then:

1. **Which modes matter.** The modes carrying `residual_fraction` of the projected residual
   |Uᵀ ∂L/∂f|² (T4, T7; for MSE exactly their share of the reducible loss) are the relevant
   ones; the slowest of them, κ_min, is the slowest mode that must be damped. A mode so light
   that even the optimal schedule cannot move it within `horizon_steps` is not worth damping
   (it would push β towards 1): κ_min is floored where the critically damped mode gets
   `HORIZON_EFOLDS` (3) e-folds over the horizon. The rationale names the active bound.
2. **Stiffest mode.** κ_max is the largest curvature of *all* modes (stability must hold on
   every mode, T10), divided by `safety` ≤ 1 to leave headroom for the curvature growth of
   networks outside the lazy limit.
3. **Heavy ball.** Polyak's optimum for a quadratic with curvatures in [κ_min, κ_max]:
   sqrt(η) = 2/(sqrt κ_max + sqrt κ_min), sqrt β = (sqrt κ_max − sqrt κ_min)/(sqrt κ_max +
   sqrt κ_min). In the exact discrete language of T10 it puts κ_min at the oscillation
   threshold η κ_min = (1 − sqrt β)² (critical damping, m = 3H/2 in the continuum, T8) and
   κ_max at η κ_max = (1 + sqrt β)² < 2(1 + β), the edge of stability; every mode in between
   shrinks by exactly sqrt β per step.
4. **Mini-batches.** Gradient noise lowers the usable lr: η_B = η/(1 + B_noise/B) with the
   simple noise scale B_noise = tr Σ/|G|² (McCandlish et al. 2018, "An empirical model of
   large-batch training") read off the same kernel (|g_i|² = ℓ'_iᵀ Θ_ii ℓ'_i), with the
   finite-population factor (N − B)/(N − 1) for batches drawn without replacement. β is then
   re-derived so that κ_min stays critically damped, β = (1 − sqrt(η_B κ_min))².
5. **Prediction.** The loss curve is the exact discrete heavy-ball map in mode space with the
   kernel frozen (T10, `predict_trajectory(method="discrete")`): exact for a linear model
   with quadratic loss, the lazy-limit prediction otherwise, noise-free for mini-batches.
6. **Can it predict?** A short trial (a copy of the model trained full batch on the probe set
   at the suggested (η, β) for a quarter of the predicted time, at most `horizon_steps/25`
   steps) compares the probe loss with the prediction. If the loss decrease is off by more
   than `TRIAL_TOLERANCE` (:mod:`.trial`), the network is outside the lazy regime (T4):
   `predicted_steps` is None and the rationale says the time to target cannot be predicted
   from one kernel.

Curvature that changes during training (cross-entropy saturating, progressive sharpening) is
what a single plan cannot follow: `CosmologyScheduler` (:mod:`.scheduler`) re-reads the
curvatures every few steps and re-plans with the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim._common import preserved
from cosmo_optim.advice.heavy_ball import (
    ModeReadout,
    Search,
    batch_factor,
    fixed_point,
    noise_scale,
    probe_indices,
    read_modes,
    relevant_modes,
    trajectory,
)
from cosmo_optim.advice.rationale import rationale
from cosmo_optim.advice.trial import TRIAL_TOLERANCE, Trial, run_trial
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual
from cosmo_optim.losses import PerSampleLoss, per_sample_loss
from cosmo_optim.optim import CosmoSGD

__all__ = ["Suggestion", "suggest_hyperparameters"]


@dataclass(frozen=True, eq=False)
class Suggestion:
    """Learning rate and momentum chosen from the NTK at initialisation (T3, T7, T8, T10).

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
        active_bound: "residual_fraction" or "horizon", whichever set kappa_min.
        noise_scale: B_noise = tr Σ/|G|² (samples); lr_batch_factor: 1/(1 + B_noise/B) with
            the finite-population correction (1.0 for full batch).
        stability_margin: max_k η κ_k / 2(1 + β), < 1 on every probe mode (T10).
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
    noise_scale: float
    lr_batch_factor: float
    stability_margin: float
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
            curve = _predicted_losses(self._dual, max(steps, self.horizon_steps), self._loss_scale)
            self._curve["loss"] = curve
        return curve

    def optimizer(self, params: Iterable[Any], **sgd_kwargs: Any) -> CosmoSGD:
        """A `CosmoSGD` running at the suggested universe; `sgd_kwargs` as for `CosmoSGD`.

        The one way to build it: ``CosmoSGD.from_suggestion(params, suggestion, **sgd_kwargs)``.
        """
        return CosmoSGD.from_suggestion(params, self, **sgd_kwargs)


def _check_arguments(
    horizon_steps: Any, batch_size: Any, target_loss: Any, residual_fraction: Any, safety: Any,
    probe_size: Any, num_inputs: int,
) -> None:
    if isinstance(horizon_steps, bool) or not isinstance(horizon_steps, int) or horizon_steps < 1:
        raise ValueError(
            f"Invalid horizon_steps: {horizon_steps!r}; it must be an integer ≥ 1 (the number "
            "of optimiser steps you plan to train for)."
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"Invalid batch_size: {batch_size!r}; it must be an integer ≥ 1, or None for "
            "full-batch training."
        )
    if target_loss is not None and not math.isfinite(float(target_loss)):
        raise ValueError(f"Invalid target_loss: {target_loss!r}; it must be a finite number.")
    if not 0 < float(residual_fraction) <= 1:
        raise ValueError(
            f"Invalid residual_fraction: {residual_fraction!r}; it must be in (0, 1] (the share "
            "of the projected residual |Uᵀ ∂L/∂f|² the relevant modes must carry)."
        )
    if not 0 < float(safety) <= 1:
        raise ValueError(
            f"Invalid safety: {safety!r}; it must be in (0, 1]: 1 is the exact heavy-ball "
            "optimum, smaller values plan for a stiffest curvature 1/safety times larger."
        )
    if probe_size is not None and not (isinstance(probe_size, int) and 1 <= probe_size):
        raise ValueError(f"Invalid probe_size: {probe_size!r}; it must be an integer ≥ 1.")
    if num_inputs < 1:
        raise ValueError("Invalid inputs: no samples; pass a batch of shape (N, ...), N ≥ 1.")


def _initial_loss(ell: PerSampleLoss, outputs: Tensor, targets: Tensor | None) -> float:
    value = float(ell.training_loss(outputs, targets))
    if not math.isfinite(value):
        raise ValueError(
            f"Invalid loss at initialisation: {value!r}; it must be finite. Check the inputs, "
            "targets and parameters for NaN/inf, and that the targets are in the loss's domain."
        )
    return value


def _predicted_losses(dual: FLRWDual, steps: int, scale: float) -> np.ndarray:
    return trajectory(dual, steps, scale)[0]


def suggest_hyperparameters(
    model: nn.Module,
    loss: Any,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    horizon_steps: int,
    batch_size: int | None = None,
    target_loss: float | None = None,
    residual_fraction: float = 0.9,
    safety: float = 0.125,
    probe_size: int | None = None,
    seed: int = 0,
) -> Suggestion:
    """Choose momentum SGD's lr and momentum from the NTK at initialisation (T7, T8, T10).

    How it decides is in the module docstring: curvatures κ_k = (λ_k/N) ℓ'' of the NTK modes
    (T8), the slowest relevant one critically damped and the stiffest one inside the edge of
    stability η κ < 2(1 + β) (T10) — Polyak's heavy-ball optimum —, the lr lowered by the
    gradient-noise scale for mini-batches, and the loss curve predicted by the discrete mode
    map (T10), checked by a short trial on the probe set. Costs one forward pass on `inputs`,
    one output-space NTK and one eigendecomposition on the probe set (O((N·C)³)), up to
    `horizon_steps` small mode-space steps per planning round, and a trial of at most
    `horizon_steps/25` full-batch steps on the probe set.

    Args:
        model: the network at initialisation (not modified).
        loss: the training loss: a torch loss module (MSELoss, CrossEntropyLoss, ...),
            `PolynomialPotentialLoss`, or a per-sample callable (see `per_sample_loss`).
        inputs: the training inputs (N, ...); `targets` the matching targets, if the loss
            needs them.
        horizon_steps: how many optimiser steps you will train for (≥ 1).
        batch_size: samples per step, or None for full-batch training.
        target_loss: the loss whose crossing `predicted_steps` reports; default 10% of the
            initial loss.
        residual_fraction: share of |Uᵀ ∂L/∂f|² the relevant modes must carry, in (0, 1].
        safety: in (0, 1]; plan for a stiffest curvature 1/safety times the measured one
            (1 is the exact heavy-ball optimum; the default 1/8 leaves room for the curvature
            growth of finite networks outside the lazy limit: progressive sharpening and the
            early catapult grew the top Hessian eigenvalue 4–6.5× on the benchmark tasks).
        probe_size: inputs in the NTK probe set; default all, or a seeded random subset of
            MAX_PROBE_ROWS // C inputs when larger.
        seed: seed of the probe subset.

    Returns:
        A `Suggestion` (lr, momentum, cosmology, predicted_steps, predictable, rationale,
        predict_loss, optimizer). The model, its buffers (BatchNorm statistics), `.grad`,
        train/eval flags and the torch/NumPy/Python random states are left as they were.

    Raises:
        ValueError: no trainable parameters, a non-finite initial loss, horizon_steps < 1, or
            another argument out of range; the message names the value and the fix.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(3, 1)
        >>> x = torch.randn(64, 3)
        >>> y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        >>> s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=100)
        >>> s.stability_margin < 1, s.predicted_steps is not None
        (True, True)
        >>> s.predict_loss(0) > s.predict_loss(100)
        True
        >>> opt = s.optimizer(model.parameters())  # CosmoSGD at (s.lr, s.momentum)
    """
    _check_arguments(horizon_steps, batch_size, target_loss, residual_fraction, safety,
                     probe_size, int(inputs.shape[0]) if inputs.dim() else 0)
    _check_trainable(model)
    ell = per_sample_loss(loss)
    first = next(p for p in model.parameters() if p.requires_grad)
    with preserved(model, first.device):
        probe = _read_probe(model, ell, inputs, targets, probe_size, seed)
        planned = _plan(probe, horizon_steps, batch_size, target_loss, residual_fraction, safety)
        trial = run_trial(model, ell, probe.inputs, probe.targets, planned.found, horizon_steps)
    text = rationale(probe.read, planned.found, planned.relevant, float(residual_fraction),
                     float(safety), probe.initial, planned.target, horizon_steps, planned.noise,
                     planned.factor, batch_size, probe.num_inputs, trial)
    return _suggestion(probe, planned, trial, horizon_steps, text)


class _Probe(NamedTuple):
    """The model at initialisation: its training loss on all inputs and its probe set."""

    initial: float
    num_inputs: int
    inputs: Tensor  # the probe subset, and its targets
    targets: Tensor | None
    read: ModeReadout  # the NTK's modes there (T7, T8)
    scale: float  # initial loss / initial probe loss


def _read_probe(model: nn.Module, ell: PerSampleLoss, inputs: Tensor, targets: Tensor | None,
                probe_size: int | None, seed: int) -> _Probe:
    """One forward on `inputs`, the probe subset, and the NTK modes there (T7, T8)."""
    with torch.no_grad():
        outputs = model(inputs)
    initial = _initial_loss(ell, outputs, targets)
    num_inputs, num_outputs = int(outputs.shape[0]), int(outputs[0].numel())
    idx = probe_indices(num_inputs, num_outputs, probe_size, seed)
    probe_y = None if targets is None else targets[idx]
    read = read_modes(model, ell, inputs[idx], outputs[idx], probe_y)
    _check_curvature(read.curvatures)
    probe_initial = float(read.values.mean())
    scale = initial / probe_initial if probe_initial > 0 else 1.0
    return _Probe(initial, num_inputs, inputs[idx], probe_y, read, scale)


class _Planned(NamedTuple):
    """What the plan was made of, and the plan (the fixed point of plan → time to target)."""

    relevant: Tensor
    target: float
    noise: float
    factor: float
    found: Search


def _plan(probe: _Probe, horizon_steps: int, batch_size: int | None, target_loss: Any,
          residual_fraction: Any, safety: Any) -> _Planned:
    """The relevant modes, the target, the mini-batch lr factor and the heavy-ball plan (T10)."""
    read = probe.read
    relevant = relevant_modes(read.curvatures, read.dual.eigenvalues, read.residual,
                              float(residual_fraction))
    target = 0.1 * probe.initial if target_loss is None else float(target_loss)
    noise = noise_scale(read.kernel, read.grad)
    factor = batch_factor(noise, batch_size, probe.num_inputs)
    found = fixed_point(read, relevant, float(safety), horizon_steps, target, probe.scale, factor)
    return _Planned(relevant, target, noise, factor, found)


def _suggestion(probe: _Probe, planned: _Planned, trial: Trial, horizon_steps: int,
                text: str) -> Suggestion:
    """The `Suggestion`: the plan, and a time to target only if the trial followed the map."""
    found, relevant = planned.found, planned.relevant
    predictable = trial.error <= TRIAL_TOLERANCE
    c = found.plan.cosmology
    return Suggestion(
        lr=c.lr, momentum=c.momentum, cosmology=c,
        predicted_steps=found.predicted if predictable else None, predictable=predictable,
        target_loss=planned.target, initial_loss=probe.initial, horizon_steps=horizon_steps,
        curvatures=probe.read.curvatures.numpy(), softest_curvatures=found.low.numpy(),
        relevant_modes=relevant.numpy(), kappa_max=found.plan.kappa_max,
        kappa_min=found.plan.kappa_min, active_bound=found.plan.active,
        noise_scale=planned.noise, lr_batch_factor=planned.factor,
        stability_margin=found.dual.stability_margin, rationale=text,
        _dual=found.dual, _loss_scale=probe.scale, _curve={"loss": found.curve},
    )


def _check_trainable(model: nn.Module) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"Invalid model: {type(model).__name__} has no trainable parameters "
            "(none with requires_grad=True), so there is nothing to optimise. "
            "Unfreeze some parameters first."
        )


def _check_curvature(kappa: Tensor) -> None:
    measured_max = float(kappa.max())
    if not measured_max > 0:
        raise ValueError(
            f"No NTK mode has positive curvature (max κ_k = {measured_max!r}): the loss is flat "
            "or concave at the initial outputs, so no stable step size follows from T10. "
            "Check the loss and the model's outputs."
        )
