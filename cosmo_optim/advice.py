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
   `_HORIZON_EFOLDS` e-folds over the horizon. The rationale names the active bound.
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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual
from cosmo_optim.losses import PerSampleLoss, loss_derivatives, per_sample_loss
from cosmo_optim.ntk import empirical_ntk
from cosmo_optim.optim import CosmoSGD
from cosmo_optim.predict import predict_trajectory
from cosmo_optim.spectrum import flat_kernel

__all__ = ["Suggestion", "suggest_hyperparameters"]

#: Default probe: as many inputs as keep the output-space kernel at N·C ≤ this many rows.
MAX_PROBE_ROWS: Final = 400
#: A mode is worth damping if, critically damped, it gets this many e-folds in the horizon.
_HORIZON_EFOLDS: Final = 3.0
#: Modes with λ_k below this fraction of λ_1 are numerically in the kernel's null space.
_NULL_RTOL: Final = 1e-10
#: At most this many rounds of plan → predicted time to target → plan.
_PLAN_ITERATIONS: Final = 4


@dataclass(frozen=True, eq=False)
class Suggestion:
    """Learning rate and momentum chosen from the NTK at initialisation (T3, T7, T8, T10).

    Build it with `suggest_hyperparameters`. Units: curvatures κ_k = m_k² in 1/time² with
    the continuum time of T2; `lr` and `momentum` are torch SGD's (T1); losses in the units
    of the training loss; steps are optimiser steps.

    Attributes:
        lr, momentum: the suggested η and β; `cosmology` is their de Sitter universe (T3).
        predicted_steps: optimiser steps until the predicted loss reaches `target_loss`, or
            None if not within `horizon_steps` (T10 discrete map, lazy limit).
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

        Equivalent to ``CosmoSGD(params, cosmology=suggestion.cosmology, **sgd_kwargs)``.
        """
        return CosmoSGD(params, cosmology=self.cosmology, **sgd_kwargs)


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


def _probe(num_inputs: int, num_outputs: int, probe_size: int | None, seed: int) -> Tensor:
    """Indices of the probe set: all inputs, or a seeded random subset (N·C ≤ MAX_PROBE_ROWS)."""
    size = max(1, MAX_PROBE_ROWS // num_outputs) if probe_size is None else probe_size
    if size >= num_inputs:
        return torch.arange(num_inputs)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_inputs, generator=gen)[:size].sort().values


def _relevant_modes(
    curvatures: Tensor, eigenvalues: Tensor, residual: Tensor, fraction: float
) -> Tensor:
    """Fewest reachable modes whose |Uᵀ ∂L/∂f|² adds up to `fraction` of the reachable total."""
    reachable = (eigenvalues > _NULL_RTOL * eigenvalues[0]) & (curvatures > 0)
    weight = torch.where(reachable, residual.pow(2), torch.zeros_like(residual))
    total = float(weight.sum())
    if not total > 0:
        raise ValueError(
            "The projected residual |Uᵀ ∂L/∂f|² is zero on every trainable mode: the initial "
            "outputs already minimise the loss on the probe set, so there is nothing to tune. "
            "Check the targets, or pass a larger probe_size."
        )
    order = torch.argsort(weight, descending=True)
    cumulative = torch.cumsum(weight[order], 0)
    count = int(torch.searchsorted(cumulative, fraction * total * (1 - 1e-12))) + 1
    return order[: min(count, int(reachable.sum()))].sort().values


def _polyak_lr(kappa_max: float, kappa_min: float) -> float:
    """Heavy-ball optimum (Polyak) for curvatures in [κ_min, κ_max]: η = 4/(√κ_max + √κ_min)².

    Its momentum, ((√κ_max − √κ_min)/(√κ_max + √κ_min))², is (1 − √(η κ_min))²: κ_min sits
    on the critical damping of T10, which is how the caller derives β after scaling η.
    """
    return 4.0 / (math.sqrt(kappa_max) + math.sqrt(kappa_min)) ** 2


def _noise_scale(kernel: Tensor, grad: Tensor) -> float:
    """B_noise = tr Σ/|G|² from the kernel blocks: |g_i|² = ℓ'_iᵀ Θ_ii ℓ'_i (samples)."""
    n = grad.shape[0]
    flat = flat_kernel(kernel)
    g = grad.reshape(-1).to(flat.dtype)
    mean_sq = float(g @ flat @ g) / n**2  # |G|², G = (1/N) Σ_i g_i
    blocks = kernel.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # (N, C, C) = Θ_ii
    per_sample = torch.einsum("na,nab,nb->n", grad.to(flat.dtype), blocks, grad.to(flat.dtype))
    trace_sigma = max(float(per_sample.mean()) - mean_sq, 0.0)
    return trace_sigma / mean_sq if mean_sq > 0 else math.inf


def _batch_factor(noise_scale: float, batch_size: int | None, num_inputs: int) -> float:
    """η_B/η = 1/(1 + B_noise (N − B)/((N − 1) B)) (McCandlish et al. 2018, finite N)."""
    if batch_size is None or batch_size >= num_inputs:
        return 1.0
    noise = noise_scale * (num_inputs - batch_size) / ((num_inputs - 1) * batch_size)
    return 1.0 / (1.0 + noise)


def _trajectory(dual: FLRWDual, steps: int, scale: float) -> tuple[np.ndarray, Tensor | None]:
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


def _predicted_losses(dual: FLRWDual, steps: int, scale: float) -> np.ndarray:
    return _trajectory(dual, steps, scale)[0]


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
    map (T10). Costs one forward pass on `inputs`, one output-space NTK and one eigen-
    decomposition on the probe set (O((N·C)³)), and `horizon_steps` small mode-space steps.

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
        A `Suggestion` (lr, momentum, cosmology, predicted_steps, rationale, predict_loss,
        optimizer).

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
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"Invalid model: {type(model).__name__} has no trainable parameters "
            "(none with requires_grad=True), so there is nothing to optimise. "
            "Unfreeze some parameters first."
        )
    ell = per_sample_loss(loss)
    with torch.no_grad():
        outputs = model(inputs)
    initial = _initial_loss(ell, outputs, targets)
    num_inputs, num_outputs = int(outputs.shape[0]), int(outputs[0].numel())

    idx = _probe(num_inputs, num_outputs, probe_size, seed)
    f = outputs[idx].detach().to(torch.float64)
    y = None if targets is None else targets[idx]
    if y is not None and y.is_floating_point():
        y = y.to(torch.float64)
    kernel = empirical_ntk(model, inputs[idx], output="full", dtype=torch.float64)
    dual = FLRWDual.from_kernel(kernel, ell, f, targets=y, cosmology=Cosmology(1.0, 0.0))
    n = dual.num_samples
    values, grad, _ = loss_derivatives(ell, f, y, order=1)
    residual = dual.eigenvectors.T @ (grad.reshape(-1) / n)  # Uᵀ ∂L/∂f (T4, T7)
    kappa = dual.mode_curvatures
    measured_max = float(kappa.max())
    if not measured_max > 0:
        raise ValueError(
            f"No NTK mode has positive curvature (max κ_k = {measured_max!r}): the loss is flat "
            "or concave at the initial outputs, so no stable step size follows from T10. "
            "Check the loss and the model's outputs."
        )

    relevant = _relevant_modes(kappa, dual.eigenvalues, residual, float(residual_fraction))
    target = 0.1 * initial if target_loss is None else float(target_loss)
    probe_initial = float(values.mean())
    scale = initial / probe_initial if probe_initial > 0 else 1.0
    noise = _noise_scale(kernel, grad)
    factor = _batch_factor(noise, batch_size, num_inputs)

    # Fixed point: the modes needed are those that must move before the target is reached,
    # with their masses anywhere on the predicted roll (T8: m_k² follows ℓ'' along the path).
    # Later rounds predict over twice the previous time to target only (the map is the cost).
    need, window, low, high = horizon_steps, horizon_steps, kappa, kappa
    for _ in range(_PLAN_ITERATIONS):
        plan = _plan(high, low, relevant, float(safety), need, need == horizon_steps, factor)
        dual = dual.replace(cosmology=plan.cosmology)
        curve, path = _trajectory(dual, window, scale)
        if window < horizon_steps and not (curve <= target).any():
            curve, path = _trajectory(dual, horizon_steps, scale)
        hits = np.flatnonzero(curve <= target)
        predicted = int(hits[0]) if hits.size else None
        new_need = horizon_steps if predicted is None else max(predicted, 1)
        if new_need == need or path is None:
            break
        need, window = new_need, min(horizon_steps, 2 * new_need)
        at_need = dual.replace(outputs=path[need].to(dual.outputs.dtype)).mode_curvatures
        low, high = torch.minimum(kappa, at_need), torch.maximum(kappa, at_need)

    suggestion = Suggestion(
        lr=plan.cosmology.lr, momentum=plan.cosmology.momentum, cosmology=plan.cosmology,
        predicted_steps=predicted, target_loss=target, initial_loss=initial,
        horizon_steps=horizon_steps, curvatures=kappa.numpy(),
        softest_curvatures=low.numpy(), relevant_modes=relevant.numpy(),
        kappa_max=plan.kappa_max, kappa_min=plan.kappa_min, active_bound=plan.active,
        noise_scale=noise, lr_batch_factor=factor, stability_margin=dual.stability_margin,
        rationale="", _dual=dual, _loss_scale=scale, _curve={"loss": curve},
    )
    text = _rationale(suggestion, dual, plan, need, float(residual_fraction), float(safety),
                      batch_size, num_inputs, curve)
    object.__setattr__(suggestion, "rationale", text)
    return suggestion


class _Plan(NamedTuple):
    cosmology: Cosmology
    kappa_max: float
    kappa_min: float
    fraction_min: float  # slowest relevant curvature
    need_min: float  # slowest curvature that can move within the steps needed
    active: str


def _plan(
    high: Tensor, low: Tensor, relevant: Tensor, safety: float, need: int, is_horizon: bool,
    factor: float,
) -> _Plan:
    """(η, β) for curvatures `high` (stiffest on the path) and `low` (softest) (T8, T10).

    κ_max = max(high)/safety over all modes; κ_min = the slowest relevant curvature, floored
    where a critically damped mode gets _HORIZON_EFOLDS e-folds within `need` steps: with
    Polyak's parameters sqrt(η κ_min) = 2/(sqrt Q + 1), so sqrt Q ≤ 2 need/E − 1.
    """
    kappa_max = float(high.max()) / safety
    fraction_min = float(low[relevant].min())
    need_min = kappa_max / max(2.0 * need / _HORIZON_EFOLDS - 1.0, 1.0) ** 2
    kappa_min = min(max(fraction_min, need_min), kappa_max)
    if fraction_min >= need_min:
        active = "residual_fraction"
    else:
        active = "horizon" if is_horizon else "time_to_target"
    lr = _polyak_lr(kappa_max, kappa_min) * factor
    momentum = (1.0 - math.sqrt(lr * kappa_min)) ** 2  # κ_min critically damped (T10)
    return _Plan(Cosmology(lr, momentum), kappa_max, kappa_min, fraction_min, need_min, active)


def _rationale(
    s: Suggestion, dual: FLRWDual, plan: _Plan, need: int, fraction: float, safety: float,
    batch_size: int | None, num_inputs: int, curve: np.ndarray,
) -> str:
    """The decision in plain language: which modes, which bound was active, what to expect."""
    c = s.cosmology
    stiffest = int(np.argmax(s.curvatures))
    lines = [
        f"NTK on {dual.num_samples} probe inputs × {dual.num_outputs} outputs "
        f"({len(s.curvatures)} modes); initial loss {s.initial_loss:.4g}.",
        f"{len(s.relevant_modes)} mode(s) carry {fraction:.0%} of the projected residual "
        f"|Uᵀ ∂L/∂f|²; the slowest of them has curvature κ = {plan.fraction_min:.3g} on the "
        "predicted path (T8).",
    ]
    if s.active_bound == "residual_fraction":
        lines.append(
            f"Active bound: the residual fraction; κ_min = {s.kappa_min:.3g} is damped critically."
        )
    else:
        why = "the horizon" if s.active_bound == "horizon" else "the predicted time to target"
        lines.append(
            f"Active bound: {why}. Modes lighter than κ = {plan.need_min:.3g} cannot move "
            f"within {need} steps, so κ_min = {s.kappa_min:.3g} is damped critically instead."
        )
    lines.append(
        f"Stiffest mode {stiffest}: κ = {s.curvatures[stiffest]:.3g}, planned as "
        f"κ_max = {s.kappa_max:.3g} (safety {safety:g})."
    )
    lines.append(
        f"Heavy-ball optimum (Polyak) for κ in [{s.kappa_min:.3g}, {s.kappa_max:.3g}]: "
        "κ_min at the oscillation threshold η κ = (1 − √β)² (m = 3H/2, T8/T10), κ_max "
        "inside the edge of stability η κ < 2(1 + β) (T10)."
    )
    if s.lr_batch_factor < 1:
        lines.append(
            f"Mini-batches of {batch_size} of {num_inputs}: gradient-noise scale "
            f"B_noise = {s.noise_scale:.3g} samples lowers the lr by ×{s.lr_batch_factor:.3g}; "
            "β re-derived to keep κ_min critically damped."
        )
    lines.append(
        f"Suggestion: lr = {s.lr:.4g}, momentum = {s.momentum:.4g}; stability margin "
        f"η κ/2(1 + β) = {s.stability_margin:.3g} (< 1 on every probe mode); "
        f"H = {c.hubble_rate:.3g}, Λ = {c.vacuum_energy:.3g}, "
        f"Hubble time {c.hubble_time_steps:.3g} steps (T3)."
    )
    if s.predicted_steps is None:
        lines.append(
            f"Prediction (lazy limit, T10 map): target loss {s.target_loss:.4g} not reached "
            f"within {s.horizon_steps} steps; predicted loss there {curve[-1]:.4g}."
        )
    else:
        lines.append(
            f"Prediction (lazy limit, T10 map): target loss {s.target_loss:.4g} after "
            f"{s.predicted_steps} steps; loss {curve[-1]:.4g} at step {len(curve) - 1}."
        )
    return "\n".join(lines)
