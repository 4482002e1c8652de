"""Eval-mode ``F.batch_norm`` with running statistics: a fixed affine map of each sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cosmo_optim.ntk.rules.base import Affine, Use

__all__ = ["BatchNorm"]


class BatchNorm(Affine):
    """``x̂`` is normalised by the running statistics, so ``∂f/∂w = Σ_s δ_is ⊙ x̂_is`` per
    channel; training mode (batch statistics) couples samples and is not modelled."""

    name, channels_first = "batch_norm", True
    arguments = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
                 "eps")

    def models(self, args: dict[str, Any]) -> bool:
        return not args.get("training") and isinstance(args.get("running_mean"), Tensor) \
            and isinstance(args.get("running_var"), Tensor)

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        C, n, a = delta.shape[0], delta.shape[1], use.args
        shape = (1, -1, *([1] * (x.dim() - 2)))
        xh = (x - a["running_mean"].reshape(shape)) * torch.rsqrt(
            a["running_var"].reshape(shape) + a.get("eps", 1e-5))
        return torch.einsum("cnks,nks->nck", delta.reshape(C, n, x.shape[1], -1),
                            xh.reshape(n, x.shape[1], -1))
