"""Per-sample losses ℓ(f, y) and their output derivatives ℓ', ℓ'' (docs/theory.md T4, T5, T7, T8).

The dual sees a training loss only through its per-sample form: the mean-reduced training loss
is `L = (1/N) Σ_i ℓ(f(x_i), y_i)` (T4), so the force on output i is `ℓ'(f_i)/N` and the mass
of a mode needs the curvature `ℓ''` (T8). `PerSampleLoss` turns a torch loss module (MSE,
cross-entropy, any elementwise `_Loss`), `PolynomialPotentialLoss` (paper Eq. 28) or a user
callable into that form, and `loss_derivatives` differentiates it with autograd: for a model
with C outputs ℓ' is a C-vector and ℓ'' a C×C Hessian per sample. `PerSampleLoss.gradient`
gives ℓ' alone, in closed form for the built-in losses (MSE, cross-entropy, the polynomial
potential) and by autograd otherwise: the trajectory prediction calls it once per step.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PerSampleLoss", "PolynomialPotentialLoss", "loss_derivatives", "per_sample_loss"]

_REDUCTIONS = ("mean", "sum", "none")

#: A loss's closed-form ℓ': given the targets, a function of the outputs returning
#: ∂(Σ_i ℓ_i)/∂f, or None for inputs it does not cover (then autograd is used).
GradientHook = Callable[[Tensor | None], Callable[[Tensor], Tensor | None]]


class PolynomialPotentialLoss(nn.Module):
    """The paper's polynomial loss ℓ(f) = scale·(f − center)^power (Eq. 28; T5).

    With an even `power` it is a potential with its minimum at `center`: power 2 is chaotic
    inflation's m²φ²/2 with m² = 2·scale. The target is ignored (the minimum is the target).
    Used as a training loss it reduces over the batch like torch losses (`reduction` "mean",
    "sum" or "none"); for a model with several outputs the per-sample loss sums over them.
    `per_sample(f)` is ℓ(f_i), shape (N,), whose mean is the "mean" training loss (T4).

    Args:
        center: the minimum c of the potential (output units).
        power: the exponent p, a positive even integer (2 and 4 in the paper).
        scale: the prefactor (loss units per output unit^p), > 0.
        reduction: "mean" (default), "sum" or "none".

    Example:
        >>> loss = PolynomialPotentialLoss(center=1.0, power=4, scale=0.5)
        >>> loss(torch.tensor([[0.0], [2.0]])).item()
        0.5
        >>> loss.per_sample(torch.tensor([[0.0], [3.0]])).tolist()
        [0.5, 8.0]
    """

    def __init__(
        self, center: float = 1.0, power: int = 2, scale: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if not (float(power) == int(power) and int(power) >= 2 and int(power) % 2 == 0):
            raise ValueError(
                f"Invalid power: {power!r}; it must be an even integer ≥ 2 so that the loss "
                "is a potential bounded below (the paper uses 2 and 4)."
            )
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"Invalid scale: {scale!r}; it must be a finite number > 0.")
        if not math.isfinite(float(center)):
            raise ValueError(f"Invalid center: {center!r}; it must be a finite number.")
        if reduction not in _REDUCTIONS:
            raise ValueError(f'Invalid reduction "{reduction}". Must be one of {_REDUCTIONS}.')
        self.center, self.power, self.scale = float(center), int(power), float(scale)
        self.reduction = reduction

    def per_sample(self, input: Tensor, target: Tensor | None = None) -> Tensor:
        """ℓ(f_i) = scale·Σ_outputs (f_i − center)^power, shape (N,) (Eq. 28)."""
        values = self.scale * (input - self.center) ** self.power
        return values.reshape(values.shape[0], -1).sum(dim=1) if values.dim() > 1 else values

    def forward(self, input: Tensor, target: Tensor | None = None) -> Tensor:
        values = self.per_sample(input)
        if self.reduction == "mean":
            return values.mean()
        return values.sum() if self.reduction == "sum" else values

    def extra_repr(self) -> str:
        return f"center={self.center}, power={self.power}, scale={self.scale}"


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

    def per_sample(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """ℓ(f_i, y_i) for every sample, shape (N,); checked for shape."""
        values = self._per_sample(outputs, targets)
        if not isinstance(values, Tensor) or values.shape != (outputs.shape[0],):
            shape = getattr(values, "shape", type(values).__name__)
            raise ValueError(
                f"The per-sample loss {self.name} returned shape {tuple(shape)}, expected "
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
    if any(getattr(module, a, None) is not None for a in ("weight", "pos_weight")):
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

    gradient, hessian = _closed_forms(module, reduction) or (None, None)
    return PerSampleLoss(per_sample, lambda f, y: module(f, target_of(y)), name, gradient,
                         hessian)


def _closed_forms(
    module: nn.Module, reduction: str
) -> tuple[GradientHook, GradientHook] | None:
    """(ℓ', ℓ'') hooks of `_from_torch_loss`'s per-sample loss for MSE and cross-entropy, or
    None. ℓ'' is per sample, (N, C, C) over the flattened per-sample outputs.

    Exact types only (a subclass may override `forward`). Each hook takes the targets and
    returns ℓ' (or ℓ'') as a function of the outputs (target-only work done once); that
    function returns None, for the autograd fallback, on inputs it does not cover.
    """
    kind = type(module)
    forms: _MSEForms | _CrossEntropyForms
    if kind is nn.MSELoss:
        forms = _MSEForms(reduction)
    elif kind is nn.CrossEntropyLoss:
        forms = _CrossEntropyForms(
            reduction,
            float(getattr(module, "label_smoothing", 0.0)),
            int(getattr(module, "ignore_index", -100)),
        )
    else:
        return None
    return forms.gradient, forms.hessian


@dataclass(frozen=True)
class _MSEForms:
    """MSE: ℓ_i = mean_d (f − y)² (or N·Σ_d for reduction "sum"); ℓ' = s (f − y), ℓ'' = s·I
    with s = 2/D (or 2N)."""

    reduction: str

    def _scale(self, f: Tensor) -> float:
        return 2.0 * f.shape[0] if self.reduction == "sum" else 2.0 / max(f[0].numel(), 1)

    @staticmethod
    def _covers(f: Tensor, y: Tensor | None) -> bool:
        return y is not None and y.shape == f.shape and y.is_floating_point()

    def gradient(self, y: Tensor | None) -> Callable[[Tensor], Tensor | None]:
        return functools.partial(self.gradient_at, y)

    def gradient_at(self, y: Tensor | None, f: Tensor) -> Tensor | None:
        if not self._covers(f, y):
            return None
        assert y is not None
        return self._scale(f) * (f - y.to(f.dtype))

    def hessian(self, y: Tensor | None) -> Callable[[Tensor], Tensor | None]:
        return functools.partial(self.hessian_at, y)

    def hessian_at(self, y: Tensor | None, f: Tensor) -> Tensor | None:
        if not self._covers(f, y):  # a constant multiple of the identity
            return None
        n, d = f.shape[0], max(f[0].numel(), 1)
        eye = torch.eye(d, dtype=f.dtype, device=f.device)
        return (self._scale(f) * eye).expand(n, d, d).clone()


@dataclass(frozen=True)
class _CrossEntropyForms:
    """Cross-entropy over logits f (N, C) with target distribution q (label smoothing ε,
    ignored rows masked): ℓ' = p Σq − q, ℓ'' = Σ_c q_c (diag p − p pᵀ), p = softmax(f)."""

    reduction: str
    eps: float
    ignore: int

    def _sum(self, f: Tensor, value: Tensor) -> Tensor:
        return f.shape[0] * value if self.reduction == "sum" else value

    def gradient(self, y: Tensor | None) -> Callable[[Tensor], Tensor | None]:
        return functools.partial(self.gradient_at, y, {})

    def gradient_at(self, y: Tensor | None, cache: dict[Any, _Prepared | None],
                    f: Tensor) -> Tensor | None:
        if y is None or f.dim() != 2 or not f.is_floating_point():
            return None
        key = (f.shape[0], f.shape[1], f.dtype, f.device)
        if key not in cache:  # the targets' one-hot/smoothing, once per output shape
            cache[key] = _ce_targets(f, y, self.eps, self.ignore)
        prepared = cache[key]
        if prepared is None:
            return None
        q, total, mask = prepared
        p = torch.softmax(f, dim=1)
        g = (p if total is None else p * total) - q
        if mask is not None:
            g = g * mask
        return self._sum(f, g)

    def hessian(self, y: Tensor | None) -> Callable[[Tensor], Tensor | None]:
        return functools.partial(self.hessian_at, y)

    def hessian_at(self, y: Tensor | None, f: Tensor) -> Tensor | None:
        if y is None or f.dim() != 2 or not f.is_floating_point():
            return None
        prepared = _ce_targets(f, y, self.eps, self.ignore)
        if prepared is None:
            return None
        _, total, mask = prepared
        p = torch.softmax(f, dim=1)
        h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        weight = total if total is not None else mask
        if weight is not None:
            h = h * weight[:, :, None]
        return self._sum(f, h)


_Prepared = tuple[Tensor, Tensor | None, Tensor | None]


def _ce_targets(f: Tensor, y: Tensor, eps: float, ignore: int) -> _Prepared | None:
    """Cross-entropy's target distribution q (label smoothing ε), Σ_c q_c (None when 1) and the
    kept-row mask (None when no row is ignored), for outputs f (N, C); None if not covered."""
    n, c = f.shape
    if y.shape == (n,) and not y.is_floating_point():  # class indices
        kept = y != ignore
        hit = torch.zeros(n, c, dtype=f.dtype, device=f.device)
        hit[kept.nonzero()[:, 0], y[kept].long()] = 1.0
        q = (1.0 - eps) * hit + eps / c
        return q, None, None if bool(kept.all()) else kept.to(f.dtype)[:, None]
    if y.shape == f.shape and y.is_floating_point():  # class probabilities
        q = y.to(f.dtype) * (1.0 - eps) + eps / c
        return q, q.sum(dim=1, keepdim=True), None
    return None


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


def loss_derivatives(
    loss: Any, outputs: Tensor, targets: Tensor | None = None, *, order: int = 2
) -> tuple[Tensor, Tensor, Tensor | None]:
    """ℓ, ℓ' and ℓ'' of a per-sample loss at the outputs (T4, T8): in closed form for the
    built-in losses (MSE, cross-entropy, the polynomial potential), else by autograd.

    Returns `(values, gradient, hessian)` with shapes (N,), (N, C) and (N, C, C) where C is
    the number of outputs per sample (outputs of shape (N,) count as C = 1); `hessian` is
    None for `order=1`. Because the loss is a sum of per-sample terms, one backward pass of
    Σ_i ℓ_i gives every ℓ'(f_i), and C more give every per-sample Hessian.

    Example:
        >>> v, g, h = loss_derivatives(PolynomialPotentialLoss(1.0, 4), torch.tensor([0.0, 2.0]))
        >>> g.flatten().tolist(), h.flatten().tolist()
        ([-4.0, 4.0], [12.0, 12.0])
    """
    ell = per_sample_loss(loss)
    if order not in (1, 2):
        raise ValueError(f"Invalid order: {order!r}; must be 1 or 2.")
    n = outputs.shape[0]
    closed = _closed_derivatives(ell, outputs, targets, order)
    if closed is not None:
        return closed
    with torch.enable_grad():
        f = outputs.detach().clone().requires_grad_(True)
        values = ell.per_sample(f, targets)
        (grad,) = torch.autograd.grad(values.sum(), f, create_graph=order == 2)
        grad_flat = grad.reshape(n, -1)
        hessian = None
        if order == 2:
            c = grad_flat.shape[1]
            rows = []
            for j in range(c):
                if not grad_flat.requires_grad:  # ℓ is linear in f
                    rows.append(torch.zeros_like(grad_flat))
                    continue
                (row,) = torch.autograd.grad(
                    grad_flat[:, j].sum(), f, retain_graph=True, allow_unused=True
                )
                rows.append(torch.zeros_like(grad_flat) if row is None else row.reshape(n, c))
            hessian = torch.stack(rows, dim=1).detach()
    return values.detach(), grad_flat.detach(), hessian


def _closed_derivatives(
    ell: PerSampleLoss, outputs: Tensor, targets: Tensor | None, order: int
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """`loss_derivatives` from the loss's closed forms, or None to use autograd."""
    if ell._gradient is None or (order == 2 and ell._hessian is None):
        return None
    f = outputs.detach()
    n = f.shape[0]
    hessian = None
    if order == 2:
        assert ell._hessian is not None
        hessian = ell._hessian(targets)(f)
        if hessian is None:
            return None
    grad = ell._gradient(targets)(f)
    if grad is None:
        return None
    with torch.no_grad():
        values = ell.per_sample(f, targets)
    return values, grad.reshape(n, -1), hessian
