"""`CosmologyScheduler`: re-plan momentum SGD's lr and momentum as the curvature changes.

One plan from the kernel at initialisation (`suggest_hyperparameters`) is too timid where the
curvature falls during training (cross-entropy saturates: ℓ'' → 0 as the margins grow) and
too bold where it grows (progressive sharpening). The scheduler re-reads the NTK mode
curvatures κ_k = (λ_k/N) u_kᵀ ℓ'' u_k (T8) on a probe batch at geometrically spaced steps
and resets (η, β) by the same rule as the one-shot advice (Polyak's heavy ball: the slowest
relevant mode critically damped, the stiffest mode at η κ_max = safety·(1 + √β)², inside
the edge of stability η κ < 2(1 + β), T10). The safety starts at 1/8 (the kernel at
initialisation says nothing of the early catapult) and doubles at every
re-plan whose loss fell, up to `safety`; the lr at most doubles per re-plan (a curvature
read as nearly zero on a saturated probe is not a licence for a huge step). If the
training loss it is shown jumps above `backoff` times the training loss at the last plan,
the safety is halved and it re-plans at once.

Cost: one forward pass, one output-space NTK and one eigendecomposition on the probe batch
(O((N·C)³)) per re-plan, about log₂(horizon_steps/first_replan) re-plans.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from cosmo_optim._common import preserved
from cosmo_optim.advice.batch import batch_cosmology, noise_per_loss
from cosmo_optim.advice.heavy_ball import (
    fixed_point,
    needed_fraction,
    plan,
    read_modes,
    relevant_modes,
)
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.losses import per_sample_loss

__all__ = ["CosmologyScheduler"]

#: The first plan's safety: headroom for an early catapult the kernel at initialisation cannot
#: see (the one-shot advice measures it by trials instead, margin.py).
_START_SAFETY = 0.125
#: The lr grows by at most this factor per re-plan.
_MAX_LR_GROWTH = 2.0


class CosmologyScheduler:
    """Re-plans the lr and momentum of a momentum-SGD optimiser from the current NTK (T8, T10).

    Call `step()` after every `optimizer.step()` (optionally with the step's training loss).
    The first plan is made at construction, then at steps `first_replan`, 2·`first_replan`,
    4·`first_replan`, … (each re-plan doubles the interval), up to `horizon_steps`.

    Args:
        optimizer: torch.optim.SGD or CosmoSGD; every param group gets the plan.
        model: the network being trained (not modified: buffers and RNG are restored).
        loss: the training loss (as for `suggest_hyperparameters`).
        probe_inputs, probe_targets: the probe batch the NTK is read on (N·C ≲ 400 rows).
        horizon_steps: how many steps training will run (the slowest mode worth damping
            must get 3 e-folds in the steps that remain).
        safety: in (0, 1]; the largest safety the schedule grows to: the stiffest curvature is
            planned at 1/safety times the measured one (stability margin ≤ safety). It starts
            at min(safety, 1/8) (headroom for an early catapult).
        residual_fraction: share of |Uᵀ ∂L/∂f|² the relevant modes must carry, in (0, 1];
            with a `target_loss`, at least 1 − target/current loss.
        batch_size, num_inputs: mini-batch size and data-set size (None: full batch); the lr
            effective step η/(1 − β) is lowered by the gradient noise read at each re-plan,
            β kept, as in `suggest_hyperparameters` (docs/advice.md, "Mini-batches").
        first_replan: the step of the first re-plan (≥ 1).
        backoff: a loss above `backoff` × the loss at the last plan halves the safety.
        target_loss: the loss training aims for (optional). Given, each re-plan damps the
            slowest mode that must move before the predicted time to target, as
            `suggest_hyperparameters` does; else the slowest that can move in the steps left.

    Attributes:
        history: one dict per plan: step, lr, momentum, kappa_max, kappa_min, safety, loss.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        >>> x, y = torch.randn(32, 2), torch.randn(32, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.0)
        >>> sched = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=40)
        >>> for _ in range(40):
        ...     opt.zero_grad()
        ...     value = nn.functional.mse_loss(model(x), y)
        ...     value.backward()
        ...     opt.step()
        ...     sched.step(value.item())
        >>> [h["step"] for h in sched.history]
        [0, 10, 30]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        loss: Any,
        probe_inputs: Tensor,
        probe_targets: Tensor | None = None,
        *,
        horizon_steps: int,
        safety: float = 0.5,
        residual_fraction: float = 0.9,
        batch_size: int | None = None,
        num_inputs: int | None = None,
        first_replan: int = 10,
        backoff: float = 2.0,
        target_loss: float | None = None,
    ) -> None:
        for name, value, least in (("horizon_steps", horizon_steps, 1),
                                   ("first_replan", first_replan, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Invalid {name}: {value!r}; it must be an integer ≥ {least}.")
        if not 0 < float(safety) <= 1:
            raise ValueError(f"Invalid safety: {safety!r}; it must be in (0, 1] (a stability "
                             "margin: 1 is the edge of the heavy-ball optimum).")
        if not 0 < float(residual_fraction) <= 1:
            raise ValueError(f"Invalid residual_fraction: {residual_fraction!r}; it must be "
                             "in (0, 1].")
        if not float(backoff) > 1:
            raise ValueError(f"Invalid backoff: {backoff!r}; it must be > 1 (a loss ratio).")
        if probe_inputs.dim() == 0 or probe_inputs.shape[0] == 0:
            raise ValueError("Invalid probe_inputs: no samples; pass a batch (N, ...), N ≥ 1.")
        self.optimizer, self.model, self.ell = optimizer, model, per_sample_loss(loss)
        self.inputs, self.targets = probe_inputs, probe_targets
        self.horizon_steps, self.max_safety = horizon_steps, float(safety)
        self.safety = min(self.max_safety, _START_SAFETY)
        self.residual_fraction, self.backoff = float(residual_fraction), float(backoff)
        self.batch_size = batch_size
        if target_loss is not None and not math.isfinite(float(target_loss)):
            raise ValueError(f"Invalid target_loss: {target_loss!r}; it must be a finite number.")
        self.target_loss = None if target_loss is None else float(target_loss)
        self.num_inputs = int(probe_inputs.shape[0]) if num_inputs is None else int(num_inputs)
        self.step_count, self._next, self._interval = 0, first_replan, first_replan
        self.history: list[dict[str, float]] = []
        self._reference = math.inf  # the loss at the last plan (probe loss until step() says)
        self.replan()

    @property
    def cosmology(self) -> Cosmology:
        """The universe of the current plan (T3)."""
        group = self.optimizer.param_groups[0]
        return Cosmology(float(group["lr"]), float(group["momentum"]))

    def step(self, loss: float | None = None) -> None:
        """Count one optimiser step; re-plan on schedule, or at once after a loss jump."""
        self.step_count += 1
        if self.step_count >= self.horizon_steps:
            return
        last = self._reference
        if loss is not None and (not math.isfinite(loss) or loss > self.backoff * last):
            self.safety /= 2.0
            self.replan(loss)
        elif self.step_count >= self._next:
            self._interval *= 2
            self._next = self.step_count + self._interval
            if loss is None or loss < last:  # training went well: a bolder margin
                self.safety = min(self.max_safety, 2.0 * self.safety)
            self.replan(loss)
        else:
            return
        if loss is not None and math.isfinite(loss):
            self._reference = loss  # the training loss at this plan: the next jump's baseline

    def replan(self, loss: float | None = None) -> Cosmology:
        """Read the curvatures now and set lr and momentum on every param group (T8, T10).

        `loss`, the current training loss if known, rescales the probe's predicted loss
        curve to the training loss when a `target_loss` is planned for.
        """
        first = next(iter(self.model.parameters()))
        with preserved(self.model, first.device):
            with torch.no_grad():
                outputs = self.model(self.inputs)
            read = read_modes(self.model, self.ell, self.inputs, outputs, self.targets)
        value = float(read.values.mean())
        self._reference = value
        known = loss is not None and math.isfinite(loss) and value > 0
        fraction = needed_fraction(self.residual_fraction, self.target_loss,
                                   loss if known else value)  # type: ignore[arg-type]
        try:
            relevant = relevant_modes(read.curvatures, read.dual.eigenvalues, read.residual,
                                      fraction)
        except ValueError:  # nothing left to fit on the probe batch: keep the plan
            return self.cosmology
        if not float(read.curvatures.max()) > 0:
            return self.cosmology
        remaining = max(self.horizon_steps - self.step_count, 1)
        if self.target_loss is None:
            chosen = plan(read.curvatures, read.curvatures, relevant, self.safety, remaining,
                          True)
        else:
            scale = loss / value if known else 1.0  # type: ignore[operator]
            chosen = fixed_point(read, relevant, self.safety, remaining, self.target_loss,
                                 scale).plan
        noisy = batch_cosmology(chosen.cosmology, noise_per_loss(read), self.batch_size,
                                self.num_inputs)  # the effective step, lowered by the noise now
        lr, momentum = noisy.lr, noisy.momentum
        if self.history:  # at most double the lr per re-plan (a trust region on κ_max)
            lr = min(lr, _MAX_LR_GROWTH * float(self.optimizer.param_groups[0]["lr"]))
        for group in self.optimizer.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        self.history.append({
            "step": self.step_count, "lr": lr, "momentum": momentum,
            "kappa_max": chosen.kappa_max,
            "kappa_min": chosen.kappa_min, "safety": self.safety, "loss": value,
        })
        return Cosmology(lr, momentum)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's counters and history (the optimiser holds lr and momentum)."""
        return {"step_count": self.step_count, "next": self._next, "interval": self._interval,
                "safety": self.safety, "reference": self._reference,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`."""
        self.step_count, self._next = int(state["step_count"]), int(state["next"])
        self._interval, self.safety = int(state["interval"]), float(state["safety"])
        self._reference = float(state["reference"])
        self.history = [dict(h) for h in state["history"]]
