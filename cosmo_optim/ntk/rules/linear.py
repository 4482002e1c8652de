"""``F.linear`` (and transformers' ``Conv1D``, recorded as a transposed linear call)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cosmo_optim.ntk.rules.base import Rule, Use, operand

__all__ = ["Linear"]


class Linear(Rule):
    """``y = x Wᵀ + b`` with ``W`` (out, in); ``transposed`` uses store ``W`` as (in, out)."""

    name, arguments, plain_rows = "linear", ("input", "weight", "bias"), True

    def models(self, args: dict[str, Any]) -> bool:  # torch also accepts a 1-d weight
        return isinstance(args.get("weight"), Tensor) and args["weight"].dim() == 2

    def out_side(self, use: Use) -> int:
        return 1 if use.args.get("transposed") else 0

    def rows(self, use: Use, delta: Tensor) -> tuple[Tensor, Tensor]:
        x, (C, n) = operand(use, delta.dtype), delta.shape[:2]
        return x.reshape(n, -1, x.shape[-1]), delta.reshape(C, n, -1, delta.shape[-1])

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        C, n = delta.shape[0], delta.shape[1]
        d = delta.reshape(C, n, -1, delta.shape[-1])
        xr = x.reshape(n, -1, x.shape[-1])
        if use.args.get("transposed"):  # weight stored (d_in, d_out): transformers' Conv1D
            return torch.einsum("cnrd,nre->nced", d, xr).reshape(n, C, -1)
        if C == 1:  # one batched matmul, no einsum permutes
            return torch.bmm(d[0].transpose(1, 2), xr).reshape(n, 1, -1)
        return torch.einsum("cnrd,nre->ncde", d, xr).reshape(n, C, -1)
