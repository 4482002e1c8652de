"""``F.embedding``: a linear map of one-hot rows, ``x_is · x_jt = [id_is == id_jt]``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cosmo_optim.ntk.rules.base import Rule, Use

__all__ = ["Embedding"]


class Embedding(Rule):
    """``max_norm`` and ``scale_grad_by_freq`` are not modelled (rows renormalised in place; a
    backward that is not the forward's derivative); ``sparse`` only changes the gradient's
    storage; the padding row gets no gradient."""

    name, ids, plain_rows = "embedding", True, True
    arguments = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                 "sparse")

    def models(self, args: dict[str, Any]) -> bool:
        return not args.get("max_norm") and not args.get("scale_grad_by_freq")

    def out_side(self, use: Use) -> int:
        return 1  # weight (vocabulary, width)

    def dims(self, use: Use) -> tuple[int, int, int]:
        w, y = use.args["weight"], use.out
        assert y is not None
        return y[0].numel() // y.shape[-1], w.shape[0], w.shape[1]

    def rows(self, use: Use, delta: Tensor) -> tuple[Tensor, Tensor]:
        C, n = delta.shape[0], delta.shape[1]
        ids = use.args["input"].detach().reshape(n, -1)
        d = delta.reshape(C, n, ids.shape[1], delta.shape[-1])
        pad = use.args.get("padding_idx")
        if pad is not None:
            d = d * (ids != (pad % use.args["weight"].shape[0])).unsqueeze(-1).to(d.dtype)
        return ids, d

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        C, n = delta.shape[0], delta.shape[1]
        ids, d = self.rows(use, delta)
        V, d_out = use.args["weight"].shape
        G = torch.zeros(n, C, V, d_out, dtype=delta.dtype, device=delta.device)
        idx = ids.unsqueeze(1).unsqueeze(-1).expand(n, C, ids.shape[1], d_out)
        G.scatter_add_(2, idx, d.transpose(0, 1))  # δ scattered into vocabulary rows
        return G.reshape(n, C, -1)
