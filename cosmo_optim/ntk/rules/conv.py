"""``conv1d``/``conv2d``: Gram rows from ``unfold`` (ungrouped, numeric padding), per-sample
weight gradients from torch's weight-gradient kernel vmapped over samples (never ``unfold``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from cosmo_optim.ntk.rules.base import Rule, Use, operand

__all__ = ["Conv"]


class Conv(Rule):
    """A convolution over ``dims`` spatial axes (a 1-d conv is a 2-d one of height 1)."""

    arguments = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    channels_first = True

    def __init__(self, dims: int) -> None:
        self.ndim = dims
        self.name = f"conv{dims}d"  # type: ignore[misc]

    def applies(self, use: Use) -> bool:
        return self.pads(use) is not None and use.args["input"].dim() == use.out.dim()  # type: ignore[union-attr]

    def gram_ok(self, use: Use) -> bool:
        return self.geometry(use) is not None

    def dims(self, use: Use) -> tuple[int, int, int]:
        w, y = use.args["weight"], use.out
        assert y is not None
        return y[0].numel() // y.shape[1], w[0].numel(), w.shape[0]

    def params(self, use: Use) -> tuple[Any, ...]:
        """Kernel, dilation, padding, stride as 2-d tuples (a 1-d conv has height 1)."""
        a = use.args

        def two(v: Any, fill: int) -> tuple[int, int]:
            t = tuple(v) if isinstance(v, (list, tuple)) else (v,) * self.ndim
            return (fill, *t) if self.ndim == 1 else (t[0], t[1])

        w = a["weight"]
        kernel = (1, w.shape[-1]) if self.ndim == 1 else tuple(w.shape[-2:])
        dilation, padding = two(a.get("dilation", 1), 1), two(a.get("padding", 0), 0)
        return kernel, dilation, padding, two(a.get("stride", 1), 1)

    def geometry(self, use: Use) -> tuple[Any, ...] | None:
        """:meth:`params` for ``F.unfold``; None for grouped convs and string padding."""
        a = use.args
        if a.get("groups", 1) != 1 or isinstance(a.get("padding", 0), str):
            return None
        return self.params(use)

    def pads(self, use: Use) -> list[tuple[int, int]] | None:
        """(left, right) zero padding per spatial dim; None if unsupported."""
        kernel, dilation, padding, _ = self.params(use)
        pad = use.args.get("padding", 0)
        if pad == "valid":
            return [(0, 0), (0, 0)]
        if pad == "same":
            tot = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
            return [(t // 2, t - t // 2) for t in tot]
        if isinstance(pad, str):
            return None
        return [(p, p) for p in padding]

    def rows(self, use: Use, delta: Tensor) -> tuple[Tensor, Tensor]:
        geo = self.geometry(use)
        assert geo is not None
        kernel, dilation, padding, stride = geo
        x, (C, n) = operand(use, delta.dtype), delta.shape[:2]
        x2 = x.unsqueeze(2) if self.ndim == 1 else x
        cols = F.unfold(x2, kernel, dilation=dilation, padding=padding, stride=stride)
        d = delta.reshape(C, n, delta.shape[2], -1).transpose(2, 3)  # (C, n, L, C_out)
        return cols.transpose(1, 2), d

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        """``convolution_backward`` vmapped over samples and components, which torch batches
        as one grouped convolution. Time ≈ the layer's weight gradient."""
        _, dilation, _, stride = self.params(use)
        pads = self.pads(use)
        assert pads is not None
        w, g = use.args["weight"].detach().to(x.dtype), use.args.get("groups", 1)
        if self.ndim == 1:
            pads, dilation, stride = pads[-1:], dilation[-1:], stride[-1:]
        if any(a != b for a, b in pads):  # asymmetric ("same" with an even kernel): pad first
            x = F.pad(x, [p for pair in reversed(pads) for p in pair])
            pads = [(0, 0)] * len(pads)
        padding = [a for a, _ in pads]

        def one(xi: Tensor, di: Tensor) -> Tensor:
            return torch.ops.aten.convolution_backward(
                di[None], xi[None], w, None, list(stride), padding, list(dilation), False,
                [0] * len(padding), g, [False, True, False])[1]

        delta = delta.contiguous()  # cotangents may come back with broadcast strides
        if delta.shape[0] == 1:
            return vmap(one)(x, delta[0]).reshape(x.shape[0], 1, -1)
        G = vmap(vmap(one, in_dims=(None, 0)), in_dims=(0, 1))(x, delta)
        return G.reshape(G.shape[0], G.shape[1], -1)
