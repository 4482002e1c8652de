"""Closed forms of ℓ' and ℓ'' for the torch losses that have them, MSE and cross-entropy
(docs/theory.md T4, T8): what `PerSampleLoss.gradient` and `loss_derivatives` use instead of
autograd, for the inputs they cover.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GradientHook", "closed_forms"]


#: A loss's closed-form ℓ': given the targets, a function of the outputs returning
#: ∂(Σ_i ℓ_i)/∂f, or None for inputs it does not cover (then autograd is used).
GradientHook = Callable[[Tensor | None], Callable[[Tensor], Tensor | None]]


def closed_forms(
    module: nn.Module, reduction: str
) -> tuple[GradientHook, GradientHook] | None:
    """(ℓ', ℓ'') hooks of a torch loss module's per-sample loss (:mod:`.per_sample`) for MSE
    and cross-entropy, or None. ℓ'' is per sample, (N, C, C) over the flattened outputs.

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
