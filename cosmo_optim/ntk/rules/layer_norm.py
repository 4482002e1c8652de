"""``F.layer_norm``'s affine parameters: ``∂f/∂w = Σ_s δ_is ⊙ x̂_is``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cosmo_optim.ntk.rules.base import Affine, Use

__all__ = ["LayerNorm"]


class LayerNorm(Affine):
    name = "layer_norm"
    arguments = ("input", "normalized_shape", "weight", "bias", "eps")

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        C, n = delta.shape[0], delta.shape[1]
        shape = tuple(use.args["normalized_shape"])
        xh = F.layer_norm(x, shape, None, None, use.args.get("eps", 1e-5))
        width = use.args["weight"].numel()
        return torch.einsum("cnrd,nrd->ncd", delta.reshape(C, n, -1, width),
                            xh.reshape(n, -1, width))
