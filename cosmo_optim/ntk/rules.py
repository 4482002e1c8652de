"""Per-layer structured NTK rules (docs/theory.md T4): one small class per kind of layer call.

Private helpers of :mod:`cosmo_optim.ntk`. A dense layer ``y = x Wᵀ + b`` seen at rows ``s``
(sequence positions, conv output pixels, or repeated calls of a shared layer) has per-sample
gradients ``∂f_i/∂W = Σ_s δ_isᵀ x_is`` and ``∂f_i/∂b = Σ_s δ_is``, with ``δ = ∂f/∂y``. So

    Θ_W[i, j] = Σ_{s,t} (x_is · x_jt)(δ_is · δ_jt)        ("gram" form)
              = <Σ_s δ_isᵀ x_is, Σ_t δ_jtᵀ x_jt>_F        ("psg" form, per-sample gradients)

and an embedding is the same with one-hot ``x`` (``x_is · x_jt = [idx_is == idx_jt]``). A
``layer_norm`` affine ``y = x̂ ⊙ w + b`` has ``∂f_i/∂w = Σ_s δ_is ⊙ x̂_is`` (per-sample form only),
and so has an eval-mode ``batch_norm``, whose ``x̂`` is normalised by the running statistics.
Per-sample conv weight gradients come from torch's weight-gradient kernel vmapped over samples
(one grouped convolution), never the full ``unfold`` matrix.

Each :class:`Rule` says when it applies (the call options it models, the shapes it needs), its
cost (rows and widths per sample), its Gram rows and its per-sample gradients. :data:`RULES`
is the registry, by the torch function a layer calls; a new kind of layer is one new class.
The recorder (:mod:`.recorder`) turns the calls of a forward into :class:`Use` records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

__all__ = [
    "RULES", "Rule", "Use", "gram_ok", "intact", "operand", "per_sample_grad", "qualifies",
    "row_count_and_width", "rows", "rule", "tied",
]


@dataclass
class Use:
    """One call touching a watched parameter: ``kind`` names its :class:`Rule` (e.g.
    ``"linear"``), ``None`` if no rule models the call.

    ``versions`` holds the autograd version counters of the captured input and output at the
    call: a rule may read them only while both are unchanged (:func:`intact`).
    """

    kind: str | None
    role: str
    args: dict[str, Any] = field(default_factory=dict)
    out: torch.Tensor | None = None
    versions: tuple[int, int] = (0, 0)
    call: int = -1  # index among the forward's recognised calls


def operand(use: Use, dtype: torch.dtype) -> Tensor:
    """The call's input as its kernel used it, in ``dtype`` (the kernel's): under autocast a
    float32 input is rounded to the call's lower-precision output dtype first, as the
    autocast kernel rounds it before the product. Token ids are returned as they are."""
    x = use.args["input"].detach()
    if not x.is_floating_point():
        return x
    y = use.out
    if y is not None and y.is_floating_point() and \
            torch.finfo(y.dtype).eps > torch.finfo(x.dtype).eps:
        x = x.to(y.dtype)
    return x.to(dtype)


def intact(use: Use) -> bool:
    """True if the tensors a rule reads still hold the values the call saw.

    An in-place op after the call (``h.relu_()``, ``h += x``, a forward hook editing its
    output) bumps the version counter of the tensor it writes, and of every view of it.
    """
    x, y = use.args.get("input"), use.out
    if not isinstance(x, Tensor) or y is None:
        return False
    return use.versions == (x._version, y._version)


class Rule:
    """The structured kernel term of the parameters of one kind of layer call."""

    kind: ClassVar[str]
    arguments: ClassVar[tuple[str, ...]]  # the call's positional argument names
    gram: ClassVar[bool] = True  # a Gram form exists (else per-sample gradients only)
    ids: ClassVar[bool] = False  # inputs are token ids: x_is · x_jt = [id_is == id_jt]
    plain_rows: ClassVar[bool] = False  # Gram rows are the input itself (no unfold)
    channels_first: ClassVar[bool] = False  # a bias's channel is axis 1 of the output

    def models(self, args: dict[str, Any]) -> bool:
        """False for call options the rule does not model (the parameter takes the exact path)."""
        return True

    def applies(self, use: Use) -> bool:
        """Shape conditions beyond a batch-first input and output."""
        return True

    def gram_ok(self, use: Use) -> bool:
        return self.gram

    def dims(self, use: Use) -> tuple[int, int, int]:
        """(R, d_in, d_out) per sample for the cost model."""
        w, y = use.args["weight"], use.out
        assert y is not None
        return y[0].numel() // y.shape[-1], w.shape[1], w.shape[0]

    def rows(self, use: Use, delta: Tensor) -> tuple[Tensor, Tensor]:
        """Layer inputs ``(n, R, d_in)`` (or ids ``(n, R)``) and cotangents ``(C, n, R, d_out)``."""
        raise NotImplementedError(f"{self.kind} has no Gram form")

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        """``∂f_ic/∂W`` of one call, (n, C, P), from its detached input and cotangents."""
        raise NotImplementedError

    def bias_grad(self, use: Use, delta: Tensor) -> Tensor:
        """``Σ_s δ_is`` over every axis but the channel axis: (n, C, channels)."""
        C, n = delta.shape[0], delta.shape[1]
        if self.channels_first:
            return delta.reshape(C, n, delta.shape[2], -1).sum(-1).transpose(0, 1)
        width = use.args["bias"].numel()
        return delta.reshape(C, n, -1, width).sum(2).transpose(0, 1)


class Linear(Rule):
    """``F.linear`` (and transformers' ``Conv1D``, recorded with ``transposed``)."""

    kind, arguments, plain_rows = "linear", ("input", "weight", "bias"), True

    def models(self, args: dict[str, Any]) -> bool:  # torch also accepts a 1-d weight
        return isinstance(args.get("weight"), Tensor) and args["weight"].dim() == 2

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


class Embedding(Rule):
    """``F.embedding``: one-hot rows; ``max_norm`` and ``scale_grad_by_freq`` are not modelled
    (rows renormalised in place; a backward that is not the forward's derivative), ``sparse``
    only changes the gradient's storage."""

    kind, ids, plain_rows = "embedding", True, True
    arguments = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                 "sparse")

    def models(self, args: dict[str, Any]) -> bool:
        return not args.get("max_norm") and not args.get("scale_grad_by_freq")

    def dims(self, use: Use) -> tuple[int, int, int]:
        w, y = use.args["weight"], use.out
        assert y is not None
        return y[0].numel() // y.shape[-1], w.shape[0], w.shape[1]

    def rows(self, use: Use, delta: Tensor) -> tuple[Tensor, Tensor]:
        C, n = delta.shape[0], delta.shape[1]
        ids = use.args["input"].detach().reshape(n, -1)
        d = delta.reshape(C, n, ids.shape[1], delta.shape[-1])
        pad = use.args.get("padding_idx")
        if pad is not None:  # the padding row gets no gradient
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


class Affine(Rule):
    """A per-channel affine map of normalised inputs, ``y = x̂ ⊙ w + b``:
    ``∂f/∂w = Σ_s δ_is ⊙ x̂_is``."""

    gram = False

    def dims(self, use: Use) -> tuple[int, int, int]:
        w = use.args["weight"] if use.args.get("weight") is not None else use.args["bias"]
        assert use.out is not None
        return use.out[0].numel() // w.numel(), w.numel(), w.numel()


class LayerNorm(Affine):
    kind = "layer_norm"
    arguments = ("input", "normalized_shape", "weight", "bias", "eps")

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        C, n = delta.shape[0], delta.shape[1]
        shape = tuple(use.args["normalized_shape"])
        xh = F.layer_norm(x, shape, None, None, use.args.get("eps", 1e-5))
        width = use.args["weight"].numel()
        return torch.einsum("cnrd,nrd->ncd", delta.reshape(C, n, -1, width),
                            xh.reshape(n, -1, width))


class BatchNorm(Affine):
    """Eval-mode ``F.batch_norm`` with running statistics: a fixed affine map of each sample."""

    kind, channels_first = "batch_norm", True
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


class Conv(Rule):
    """``conv1d``/``conv2d``: Gram rows from ``unfold`` (ungrouped, numeric padding), per-sample
    weight gradients from torch's weight-gradient kernel vmapped over samples."""

    arguments = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    channels_first = True

    def __init__(self, kind: str, dims: int) -> None:
        self.kind, self.ndim = kind, dims  # type: ignore[misc]

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
        """No ``unfold``: ``convolution_backward`` vmapped over samples and components, which
        torch batches as one grouped convolution. Time ≈ the layer's weight gradient."""
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


#: The registry: the torch function a layer calls -> its rule.
RULES: dict[Any, Rule] = {
    F.linear: Linear(), torch.conv1d: Conv("conv1d", 1), torch.conv2d: Conv("conv2d", 2),
    F.embedding: Embedding(), F.layer_norm: LayerNorm(), F.batch_norm: BatchNorm(),
}
_BY_KIND = {r.kind: r for r in RULES.values()}


def rule(use: Use) -> Rule:
    """The rule of a recognised call."""
    assert use.kind is not None
    return _BY_KIND[use.kind]


def qualifies(uses: list[Use], n: int) -> bool:
    """True if a structured rule is exact for a parameter with these uses, chunk of n samples:
    every call known, in one role, batch-first, and its captured tensors still intact."""
    if not uses or any(u.kind is None for u in uses):
        return False
    if len({(u.kind, u.role) for u in uses}) != 1 and not tied(uses):
        return False
    for u in uses:
        x, y = u.args["input"], u.out
        assert y is not None
        if not intact(u):
            return False
        if y.dim() == 0 or x.dim() == 0 or y.shape[0] != n or x.shape[0] != n:
            return False
        if not rule(u).applies(u):
            return False
    return True


def tied(uses: list[Use]) -> bool:
    """True for an embedding tied to an ``nn.Linear`` output projection (GPT-2's ``wte`` and
    ``lm_head``): both per-sample gradients live in the same (vocabulary, width) layout, so they
    add; its kernel is each use's Gram term plus their cross term (:mod:`.structured`)."""
    return {u.kind for u in uses} == {"embedding", "linear"} and all(
        u.role == "weight" and not u.args.get("transposed") for u in uses)


def gram_ok(uses: list[Use]) -> bool:
    """True if the Gram form is available (the per-sample form always is)."""
    return not tied(uses) and all(rule(u).gram_ok(u) for u in uses)


def per_sample_grad(use: Use, delta: Tensor) -> Tensor:
    """``∂f_ic/∂θ`` of one call, flattened: (n, C, P). ``delta`` is (C, *y.shape).

    Time O(C n R d_in d_out) (a batched matmul; conv: a vmapped weight-gradient kernel),
    memory O(n C P).
    """
    if use.role == "bias":
        return rule(use).bias_grad(use, delta)
    return rule(use).weight_grad(use, operand(use, delta.dtype), delta)


def rows(use: Use, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Layer inputs ``(n, R, d_in)`` (or token ids ``(n, R)``) and cotangents ``(C, n, R, d_out)``.

    ``delta`` is ``∂f_c/∂y`` stacked over output components, shape ``(C, *y.shape)``.
    """
    return rule(use).rows(use, delta)


def row_count_and_width(use: Use) -> tuple[int, int, int]:
    """(R, d_in, d_out) per sample for the cost model; d_in = vocabulary size for embeddings."""
    return rule(use).dims(use)
