"""`PerSampleLoss`: a training loss in the dual's per-sample form ℓ(f, y), whose mean over the
samples is the training loss (docs/theory.md T4), and `per_sample_loss`, which builds it from a
torch loss module, `PolynomialPotentialLoss` or a per-sample callable, with the closed forms of
ℓ' and ℓ'' where the loss has them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cosmo_optim.losses.closed_forms import GradientHook, closed_forms
from cosmo_optim.losses.potential import PolynomialPotentialLoss

__all__ = ["PerSampleLoss", "per_sample_loss"]


class PerSampleLoss:
    """A loss in the dual's form: `per_sample(f, y)` is ℓ(f_i, y_i) with mean equal to L (T4).

    `training_loss(f, y)` is the loss the optimiser actually minimises (the user's module
    itself when one was given, so training is bit-for-bit the user's). Build it with
    `per_sample_loss(loss)`.
    """

    def __init__(
        self,
        per_sample: Callable[[Tensor, Tensor | None], Tensor],
        training_loss: Callable[[Tensor, Tensor | None], Tensor] | None = None,
        name: str = "loss",
        gradient: GradientHook | None = None,
        hessian: GradientHook | None = None,
    ) -> None:
        self._per_sample = per_sample
        self._training = training_loss
        self._gradient = gradient
        self._hessian = hessian
        self.name = name

    @property
    def closed_gradient(self) -> GradientHook | None:
        """The closed form of ℓ' (targets ↦ outputs ↦ ℓ', or None on inputs it does not
        cover), or None when the loss has none and autograd is used (T4)."""
        return self._gradient

    @property
    def closed_hessian(self) -> GradientHook | None:
        """The closed form of the per-sample ℓ'' (N, C, C), as `closed_gradient` (T8)."""
        return self._hessian

    def per_sample(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """ℓ(f_i, y_i) for every sample, shape (N,); checked for shape. Floating targets are
        cast to the outputs' dtype (some losses' backward refuse mixed dtypes, e.g. Huber)."""
        if targets is not None and targets.is_floating_point() and outputs.is_floating_point():
            targets = targets.to(outputs.dtype)
        values = self._per_sample(outputs, targets)
        if not isinstance(values, Tensor) or values.shape != (outputs.shape[0],):
            got = (f"shape {tuple(values.shape)}" if isinstance(values, Tensor)
                   else f"a {type(values).__name__}, not a Tensor")
            raise ValueError(
                f"The per-sample loss {self.name} returned {got}, expected shape "
                f"({outputs.shape[0]},): one loss per sample whose mean is the training loss "
                "(use reduction='none' and average over the non-batch dimensions)."
            )
        return values

    def gradient(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """ℓ'(f_i, y_i) = ∂ℓ_i/∂f_i for every sample, the shape of `outputs` (T4).

        In closed form when the loss has one (the built-in losses, for the inputs they cover),
        else one autograd call on Σ_i ℓ_i.

        >>> ell = per_sample_loss(torch.nn.MSELoss())
        >>> ell.gradient(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])).tolist()
        [[1.0, 3.0]]
        """
        return self.gradient_at(targets)(outputs)

    def gradient_at(self, targets: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """`gradient` with the targets fixed: f ↦ ℓ'(f, targets), for repeated calls (the
        target-only work of a closed form is done once)."""
        closed = None if self._gradient is None else self._gradient(targets)

        def autograd(outputs: Tensor) -> Tensor:
            with torch.enable_grad():
                f = outputs.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.per_sample(f, targets).sum(), f)
            return g

        if closed is None:
            return autograd

        def gradient(outputs: Tensor) -> Tensor:
            g = closed(outputs)
            return autograd(outputs) if g is None else g

        return gradient

    def training_loss(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """The scalar training loss L; the mean of `per_sample` unless a module was given."""
        if self._training is not None:
            return self._training(outputs, targets)
        return self.per_sample(outputs, targets).mean()

    def __call__(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        return self.per_sample(outputs, targets)

    def __repr__(self) -> str:
        return f"PerSampleLoss({self.name})"


def _needs_target(name: str) -> Callable[[Tensor | None], Tensor]:
    def check(targets: Tensor | None) -> Tensor:
        if targets is None:
            raise ValueError(f"{name} needs targets; pass targets=... (one per input).")
        return targets

    return check


def _from_torch_loss(module: nn.modules.loss._Loss) -> PerSampleLoss:
    """Elementwise or per-sample torch losses, reduced per sample so that mean_i ℓ_i = L."""
    name = type(module).__name__
    reduction = getattr(module, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"Invalid {name}(reduction={reduction!r}) as a training loss; the dual needs a "
            "scalar loss: use reduction='mean' (or 'sum')."
        )
    weighted_mean = isinstance(module, (nn.CrossEntropyLoss, nn.NLLLoss))  # Σ w ℓ / Σ w
    if weighted_mean and getattr(module, "weight", None) is not None:
        raise ValueError(
            f"{name} with class weights is not a plain mean of per-sample losses; "
            "pass a callable returning per-sample losses instead."
        )
    unreduced = copy.copy(module)
    unreduced.reduction = "none"
    target_of = _needs_target(name)

    def per_sample(outputs: Tensor, targets: Tensor | None) -> Tensor:
        values = unreduced(outputs, target_of(targets))
        n = outputs.shape[0]
        values = values.reshape(n, -1)
        if reduction == "sum":  # L = Σ_all = N · mean_i(Σ_dims)
            return n * values.sum(dim=1)
        return values.mean(dim=1)

    gradient, hessian = closed_forms(module, reduction) or (None, None)
    return PerSampleLoss(per_sample, lambda f, y: module(f, target_of(y)), name, gradient,
                         hessian)


def per_sample_loss(loss: Any) -> PerSampleLoss:
    """Convert a training loss into the per-sample ℓ(f, y) the dual differentiates (T4).

    Accepts a `PerSampleLoss`, `PolynomialPotentialLoss`, a torch loss module with
    reduction "mean" or "sum" (MSELoss, L1Loss, HuberLoss, CrossEntropyLoss,
    BCEWithLogitsLoss, ...), or a callable `fn(outputs, targets) -> Tensor` of shape (N,)
    returning per-sample losses (their mean is then the training loss).

    Example:
        >>> ell = per_sample_loss(torch.nn.MSELoss())
        >>> ell(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])).tolist()
        [5.0]
    """
    if isinstance(loss, PerSampleLoss):
        return loss
    if isinstance(loss, type):
        raise ValueError(
            f"Invalid loss: the class {loss.__name__}, not an instance. "
            f"Fix: pass {loss.__name__}() (e.g. nn.CrossEntropyLoss())."
        )
    if isinstance(loss, PolynomialPotentialLoss):
        if loss.reduction not in ("mean", "sum"):
            raise ValueError(
                f"Invalid {loss!r} (reduction={loss.reduction!r}) as a training loss; the dual "
                "needs a scalar loss: use reduction='mean' (or 'sum')."
            )
        total = loss.reduction == "sum"  # L = Σ_i ℓ_i = mean_i(N ℓ_i)

        def factor(f: Tensor) -> int:
            return f.shape[0] if total else 1

        gradient = hessian = None
        if type(loss).per_sample is PolynomialPotentialLoss.per_sample:

            def gradient(y: Tensor | None) -> Callable[[Tensor], Tensor]:
                p, a, c = loss.power, loss.power * loss.scale, loss.center
                return lambda f: factor(f) * a * (f - c) ** (p - 1)  # ℓ' = p·scale·(f − c)^(p−1)

            def hessian(y: Tensor | None) -> Callable[[Tensor], Tensor]:
                p, a, c = loss.power, loss.power * (loss.power - 1) * loss.scale, loss.center
                # elementwise: diagonal p(p−1)·scale·(f − c)^(p−2) over each sample's outputs
                return lambda f: factor(f) * torch.diag_embed(
                    a * (f.reshape(f.shape[0], -1) - c) ** (p - 2)
                )

        return PerSampleLoss(lambda f, y: factor(f) * loss.per_sample(f), lambda f, y: loss(f),
                             repr(loss), gradient, hessian)
    if isinstance(loss, nn.modules.loss._Loss):
        return _from_torch_loss(loss)
    if callable(loss):
        return PerSampleLoss(loss, None, getattr(loss, "__name__", type(loss).__name__))
    raise ValueError(
        f"Invalid loss: {loss!r}; give a torch loss module, PolynomialPotentialLoss, or a "
        "callable fn(outputs, targets) returning per-sample losses of shape (N,)."
    )
