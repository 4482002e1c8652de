"""A parameter broadcast over the samples: ``p.expand(n, ...)`` (a class token) or ``x + p``
with ``p`` of batch size 1 (a learned position embedding): ``∂f_i/∂p = Σ δ_i`` over the axes
``p`` is broadcast along (per-sample form only)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cosmo_optim.ntk.rules.base import Rule, Use

__all__ = ["Broadcast"]


class Broadcast(Rule):
    """``Tensor.expand`` and ``add`` of a parameter that every sample sees whole; the sum
    ``add(x, p, alpha=a)`` with ``a ≠ 1`` is not modelled."""

    name, gram = "broadcast", False
    arguments = ("input", "other")
    roles = ("input", "other")

    def models(self, args: dict[str, Any]) -> bool:
        return args.get("alpha", 1) == 1

    def batch_first(self, use: Use, n: int) -> bool:
        p, y = use.args.get(use.role), use.out
        if not isinstance(p, Tensor) or y is None or y.dim() < max(p.dim(), 1):
            return False
        aligned = (1,) * (y.dim() - p.dim()) + tuple(p.shape)
        return y.shape[0] == n and aligned[0] == 1

    def dims(self, use: Use) -> tuple[int, int, int]:
        width = use.args[use.role].numel()
        return 1, width, width

    def per_sample_grad(self, use: Use, delta: Tensor) -> Tensor:
        p, y = use.args[use.role], use.out
        assert y is not None
        C, n = delta.shape[0], delta.shape[1]
        aligned = (1,) * (y.dim() - p.dim()) + tuple(p.shape)
        d = delta.reshape(C * n, *y.shape[1:]).sum_to_size(C * n, *aligned[1:])
        return d.reshape(C, n, -1).transpose(0, 1)
