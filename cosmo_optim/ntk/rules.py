"""Per-layer structured NTK rules (docs/theory.md T4): capture layer inputs and output cotangents.

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

Parameters are recognised by watching every torch function call of one forward pass with a
``TorchFunctionMode``: a parameter qualifies only if *every* call that touches it is a
``linear``/``conv1d``/``conv2d``/``embedding``/``layer_norm``/``batch_norm`` (eval mode, running
statistics) in the same role (weight or bias),
with the sample axis first. Self-attention calls of ``F.multi_head_attention_forward`` are
re-dispatched as two ``F.linear`` calls (:mod:`cosmo_optim.ntk.attention`). Anything else
(weight tying across kinds, parametrisations, a layer whose input is not batch-first) sends it
to the jacobian path, which is exact for any parameter.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap
from torch.overrides import TorchFunctionMode

from cosmo_optim.ntk import attention

# (function, argument names) of the calls a structured rule understands.
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_SIGNATURES: dict[Any, tuple[str, tuple[str, ...]]] = {
    F.linear: ("linear", ("input", "weight", "bias")),
    torch.conv1d: ("conv1d", _CONV_ARGS),
    torch.conv2d: ("conv2d", _CONV_ARGS),
    F.embedding: (
        "embedding",
        ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"),
    ),
    F.layer_norm: ("layer_norm", ("input", "normalized_shape", "weight", "bias", "eps")),
    F.batch_norm: ("batch_norm", ("input", "running_mean", "running_var", "weight", "bias",
                                  "training", "momentum", "eps")),
}
# Calls that read metadata only: they never carry a derivative, so they are not "uses".
_METADATA_CALLS = {"dim", "size", "numel", "is_contiguous", "is_floating_point", "stride"}
_METADATA_ATTRS = {
    "dtype", "shape", "device", "requires_grad", "is_nested", "grad_fn", "is_leaf", "ndim",
    "layout", "is_cuda", "is_sparse", "is_quantized", "is_meta", "names",
}


# Calls that flatten the leading dims of a batch-first tensor, as before transformers' Conv1D.
_FLATTENS = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape}


@dataclass
class Use:
    """One call touching a watched parameter: ``kind`` is e.g. ``"linear"``, ``None`` if unknown.

    ``versions`` holds the autograd version counters of the captured input and output at the
    call: a rule may read them only while both are unchanged (:func:`intact`).
    """

    kind: str | None
    role: str
    args: dict[str, Any] = field(default_factory=dict)
    out: torch.Tensor | None = None
    versions: tuple[int, int] = (0, 0)
    call: int = -1  # index among the forward's recognised calls


def intact(use: Use) -> bool:
    """True if the tensors a rule reads still hold the values the call saw.

    An in-place op after the call (``h.relu_()``, ``h += x``, a forward hook editing its
    output) bumps the version counter of the tensor it writes, and of every view of it.
    """
    x, y = use.args.get("input"), use.out
    if not isinstance(x, Tensor) or y is None:
        return False
    return use.versions == (x._version, y._version)


def _modelled(kind: str, args: dict[str, Any]) -> bool:
    """False for call options a rule does not model; such parameters take the exact path.

    ``max_norm`` renormalises embedding rows in place and ``scale_grad_by_freq`` rescales the
    backward by in-batch token counts (not the derivative of the forward); ``sparse`` only
    changes the gradient's storage and is modelled.
    """
    if kind == "embedding":
        return not args.get("max_norm") and not args.get("scale_grad_by_freq")
    if kind == "batch_norm":  # eval mode: a fixed per-channel affine map of each sample
        return not args.get("training") and isinstance(args.get("running_mean"), Tensor) \
            and isinstance(args.get("running_var"), Tensor)
    if kind == "linear":  # torch also accepts a 1-d weight (a dot product)
        return isinstance(args.get("weight"), Tensor) and args["weight"].dim() == 2
    return True


def _plain(t: Any) -> bool:
    """A tensor outside any torch.func transform and without a forward-mode tangent: the
    values a rule reads are the batch's, and backward reaches them."""
    if not isinstance(t, Tensor) or torch._C._functorch.is_functorch_wrapped_tensor(t):
        return False
    return fwAD.unpack_dual(t).tangent is None


def _is_metadata(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in _METADATA_ATTRS
    return name in _METADATA_CALLS


class UseRecorder(TorchFunctionMode):
    """Record, per watched parameter, every torch call it enters during a forward pass.

    The outputs of the recognised calls numbered in ``protect`` reach the model as copies, so
    in-place ops downstream (``ReLU(inplace=True)``, ``h += x``, a hook editing its output)
    cannot overwrite the tensor whose cotangent a rule reads (:func:`overwritten` finds them).
    """

    def __init__(self, watched: dict[int, str], protect: frozenset[int] = frozenset(),
                 foreign: dict[int, str] | None = None) -> None:
        super().__init__()
        self.watched = watched  # id(tensor) -> parameter name
        self.protect = protect
        self.foreign = foreign or {}  # id(user's own parameter) -> name: must never be seen
        self.foreign_seen: set[str] = set()
        self.calls = 0
        self.uses: dict[str, list[Use]] = {name: [] for name in watched.values()}
        self.flat: dict[int, tuple[Any, int]] = {}  # id(rows) -> (weakref(rows), leading dim)
        self.functions: set[Any] = set()  # every torch function the forward called
        self.out_bytes = 0  # bytes of every tensor the forward produced (activation estimate)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.addmm:
            out = _conv1d_addmm(self, args, kwargs)
            if out is not None:
                return out
        if func is F.multi_head_attention_forward:
            bound = attention.bind(args, kwargs)
            if attention.supported(bound):
                with self:  # record the projections as F.linear calls
                    return attention.decompose(bound)
        self.functions.add(func)
        out = func(*args, **kwargs)
        if func in _FLATTENS:
            _note_flatten(self, args[0], out)
        if isinstance(out, Tensor):
            self.out_bytes += out.numel() * out.element_size()
        flat = [*args, *kwargs.values()]
        flat += [t for a in flat if isinstance(a, (list, tuple)) for t in a]
        self.foreign_seen.update(self.foreign[id(a)] for a in flat if id(a) in self.foreign)
        hits = [(i, a) for i, a in enumerate(args) if id(a) in self.watched]
        hits += [(k, a) for k, a in kwargs.items() if id(a) in self.watched]
        hits += [(-1, t) for t in flat[len(args) + len(kwargs):] if id(t) in self.watched]
        if not hits or _is_metadata(func):
            return out
        kind, names = _SIGNATURES.get(func, (None, ()))
        bound = dict(zip(names, args, strict=False)) | kwargs
        captured = None
        for key, tensor in hits:
            role = names[key] if isinstance(key, int) and 0 <= key < len(names) else str(key)
            known = kind is not None and role in ("weight", "bias") and _modelled(kind, bound)
            known = known and _plain(out) and _plain(bound.get("input"))
            use = Use(kind if known else None, role)
            if known:
                captured = out
                use.args, use.out, use.call = bound, out, self.calls
                use.versions = (bound["input"]._version, out._version)
            self.uses[self.watched[id(tensor)]].append(use)
        if captured is None:
            return out
        self.calls += 1
        if self.calls - 1 not in self.protect:
            return out
        self.out_bytes += captured.numel() * captured.element_size()
        return captured.clone()

    def overwritten(self) -> frozenset[int]:
        """Recognised calls whose output an in-place op changed after the call."""
        return frozenset(u.call for us in self.uses.values() for u in us
                         if u.out is not None and u.out._version != u.versions[1])


def _note_flatten(rec: UseRecorder, src: Any, out: Any) -> None:
    """Remember ``out = src.view(-1, d)`` of a tensor ``src`` (n, ..., d): rows sample-major."""
    if isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor) and src.dim() >= 3 \
            and out.dim() == 2 and out.shape == (src.shape[:-1].numel(), src.shape[-1]):
        rec.flat[id(out)] = (weakref.ref(out), src.shape[0])


def _conv1d_addmm(rec: UseRecorder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """transformers' ``Conv1D``: ``addmm(b, x.view(-1, d_in), W)``, ``W`` stored (d_in, d_out).

    When ``W`` (or ``b``) is watched and ``x`` (n, ..., d_in) was flattened sample-major, run
    the same addmm, view its output as (n, R, d_out) and record a ``linear`` use on that view
    (``transposed``: the parameter is ``Wᵀ`` of ``F.linear``). The caller gets a view of it, so
    the cotangent of the recorded output is the layer's per-sample cotangent. Anything else
    (``beta``/``alpha``, other shapes, rows of unknown order): None, the call is recorded as an
    unknown use and the parameter takes the jacobian path.
    """
    names = ("input", "mat1", "mat2")
    a = dict(zip(names, args, strict=False)) | kwargs
    if set(a) != set(names):
        return None
    b, x, w = a["input"], a["mat1"], a["mat2"]
    if not all(isinstance(t, torch.Tensor) for t in (b, x, w)):
        return None
    if (id(w) not in rec.watched and id(b) not in rec.watched) or id(x) in rec.watched:
        return None
    ref, n = rec.flat.get(id(x), (None, 0))
    if ref is None or ref() is not x or w.dim() != 2 or b.shape != (w.shape[1],) \
            or x.shape[0] % n:
        return None
    rec.functions.add(torch.addmm)
    y = torch.addmm(b, x, w).view(n, -1, w.shape[1])
    rec.out_bytes += y.numel() * y.element_size()
    bound = {"input": x.view(n, -1, x.shape[1]), "weight": w.detach().t(), "bias": b,
             "transposed": True}
    call, rec.calls = rec.calls, rec.calls + 1
    for t, role in ((w, "weight"), (b, "bias")):
        if id(t) in rec.watched:
            use = Use("linear", role, bound, y, (bound["input"]._version, y._version), call)
            rec.uses[rec.watched[id(t)]].append(use)
    if call not in rec.protect:
        return y.view(-1, w.shape[1])
    rec.out_bytes += y.numel() * y.element_size()
    return y.view(-1, w.shape[1]).clone()  # a copy: in-place edits downstream were seen


def _conv_geometry(use: Use) -> tuple[Any, ...] | None:
    """Kernel, dilation, padding, stride as 2-d tuples for ``F.unfold``; None if unsupported."""
    a = use.args
    if a.get("groups", 1) != 1 or isinstance(a.get("padding", 0), str):
        return None
    return _conv_params(use)


def _conv_params(use: Use) -> tuple[Any, ...]:
    a = use.args
    dims = 1 if use.kind == "conv1d" else 2

    def two(v: Any, fill: int) -> tuple[int, int]:
        t = tuple(v) if isinstance(v, (list, tuple)) else (v,) * dims
        return (fill, *t) if dims == 1 else (t[0], t[1])

    w = a["weight"]
    kernel = (1, w.shape[-1]) if dims == 1 else tuple(w.shape[-2:])
    dilation, padding = two(a.get("dilation", 1), 1), two(a.get("padding", 0), 0)
    return kernel, dilation, padding, two(a.get("stride", 1), 1)


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
        if u.kind in ("conv1d", "conv2d") and (_conv_pads(u) is None or x.dim() != y.dim()):
            return False
    return True


def tied(uses: list[Use]) -> bool:
    """True for an embedding tied to an ``nn.Linear`` output projection (GPT-2's ``wte`` and
    ``lm_head``): both per-sample gradients live in the same (vocabulary, width) layout, so they
    add (per-sample form only)."""
    return {u.kind for u in uses} == {"embedding", "linear"} and all(
        u.role == "weight" and not u.args.get("transposed") for u in uses)


def gram_ok(uses: list[Use]) -> bool:
    """True if the Gram form is available (the per-sample form always is)."""
    k = uses[0].kind
    if tied(uses):
        return False
    return k in ("linear", "embedding") or (
        k in ("conv1d", "conv2d") and all(_conv_geometry(u) is not None for u in uses))


def _conv_pads(use: Use) -> list[tuple[int, int]] | None:
    """(left, right) zero padding per spatial dim of a conv call; None if unsupported."""
    kernel, dilation, padding, _ = _conv_params(use)
    pad = use.args.get("padding", 0)
    if pad == "valid":
        return [(0, 0), (0, 0)]
    if pad == "same":
        tot = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return [(t // 2, t - t // 2) for t in tot]
    if isinstance(pad, str):
        return None
    return [(p, p) for p in padding]


def per_sample_grad(use: Use, delta: torch.Tensor) -> torch.Tensor:
    """``∂f_ic/∂θ`` of one call, flattened: (n, C, P). ``delta`` is (C, *y.shape).

    Time O(C n R d_in d_out) (a batched matmul; conv: a vmapped weight-gradient kernel),
    memory O(n C P).
    """
    C, n = delta.shape[0], delta.shape[1]
    kind, x = use.kind, use.args["input"].detach()
    if use.role == "bias":  # Σ_s δ_is over every axis but the channel axis
        if kind in ("conv1d", "conv2d", "batch_norm"):
            return delta.reshape(C, n, delta.shape[2], -1).sum(-1).transpose(0, 1)
        width = use.args["bias"].numel()
        return delta.reshape(C, n, -1, width).sum(2).transpose(0, 1)
    if kind == "linear":
        d = delta.reshape(C, n, -1, delta.shape[-1])
        xr = x.reshape(n, -1, x.shape[-1])
        if use.args.get("transposed"):  # weight stored (d_in, d_out): transformers' Conv1D
            return torch.einsum("cnrd,nre->nced", d, xr).reshape(n, C, -1)
        if C == 1:  # one batched matmul, no einsum permutes
            return torch.bmm(d[0].transpose(1, 2), xr).reshape(n, 1, -1)
        G = torch.einsum("cnrd,nre->ncde", d, xr)
        return G.reshape(n, C, -1)
    if kind == "embedding":  # scatter δ into vocabulary rows
        ids, d = rows(use, delta)
        V, d_out = use.args["weight"].shape
        G = torch.zeros(n, C, V, d_out, dtype=delta.dtype, device=delta.device)
        idx = ids.unsqueeze(1).unsqueeze(-1).expand(n, C, ids.shape[1], d_out)
        G.scatter_add_(2, idx, d.transpose(0, 1))
        return G.reshape(n, C, -1)
    if kind == "layer_norm":  # ∂f/∂w = Σ_s δ_is ⊙ x̂_is
        shape = tuple(use.args["normalized_shape"])
        xh = F.layer_norm(x, shape, None, None, use.args.get("eps", 1e-5))
        width = use.args["weight"].numel()
        return torch.einsum("cnrd,nrd->ncd", delta.reshape(C, n, -1, width),
                            xh.reshape(n, -1, width))
    if kind == "batch_norm":  # ∂f/∂w_k = Σ_s δ_isk x̂_isk, x̂ from the running statistics
        a = use.args
        shape = (1, -1, *([1] * (x.dim() - 2)))
        xh = (x - a["running_mean"].reshape(shape)) * torch.rsqrt(
            a["running_var"].reshape(shape) + a.get("eps", 1e-5))
        return torch.einsum("cnks,nks->nck", delta.reshape(C, n, x.shape[1], -1),
                            xh.reshape(n, x.shape[1], -1))
    return _conv_psg(use, x, delta)


def _conv_psg(use: Use, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-sample conv weight gradients (no ``unfold``): torch's weight-gradient kernel
    (``convolution_backward``) vmapped over samples and output components, which batches them
    as one grouped convolution. Time ≈ the layer's weight gradient; memory O(n C P)."""
    _, dilation, _, stride = _conv_params(use)
    pads = _conv_pads(use)
    assert pads is not None
    w = use.args["weight"].detach()
    g = use.args.get("groups", 1)
    if use.kind == "conv1d":
        pads, dilation, stride = pads[-1:], dilation[-1:], stride[-1:]
    if any(a != b for a, b in pads):  # asymmetric ("same" with an even kernel): pad first
        x = F.pad(x, [p for pair in reversed(pads) for p in pair])
        pads = [(0, 0)] * len(pads)
    padding = [a for a, _ in pads]

    def weight_grad(xi: torch.Tensor, di: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution_backward(
            di[None], xi[None], w, None, list(stride), padding, list(dilation), False,
            [0] * len(padding), g, [False, True, False])[1]

    delta = delta.contiguous()  # cotangents may come back with broadcast strides
    if delta.shape[0] == 1:
        return vmap(weight_grad)(x, delta[0]).reshape(x.shape[0], 1, -1)
    G = vmap(vmap(weight_grad, in_dims=(None, 0)), in_dims=(0, 1))(x, delta)
    return G.reshape(G.shape[0], G.shape[1], -1)


def rows(use: Use, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer inputs ``(n, R, d_in)`` (or token ids ``(n, R)``) and cotangents ``(C, n, R, d_out)``.

    ``delta`` is ``∂f_c/∂y`` stacked over output components, shape ``(C, *y.shape)``.
    """
    x = use.args["input"].detach()  # the kernel is a value, not part of any graph
    C, n = delta.shape[0], delta.shape[1]
    if use.kind == "linear":
        return x.reshape(n, -1, x.shape[-1]), delta.reshape(C, n, -1, delta.shape[-1])
    if use.kind == "embedding":
        ids = x.reshape(n, -1)
        d = delta.reshape(C, n, ids.shape[1], delta.shape[-1])
        pad = use.args.get("padding_idx")
        if pad is not None:  # the padding row gets no gradient
            d = d * (ids != (pad % use.args["weight"].shape[0])).unsqueeze(-1).to(d.dtype)
        return ids, d
    geo = _conv_geometry(use)
    assert geo is not None
    kernel, dilation, padding, stride = geo
    x2 = x.unsqueeze(2) if use.kind == "conv1d" else x
    cols = F.unfold(x2, kernel, dilation=dilation, padding=padding, stride=stride)
    d = delta.reshape(C, n, delta.shape[2], -1).transpose(2, 3)  # (C, n, L, C_out)
    return cols.transpose(1, 2), d


def row_count_and_width(use: Use) -> tuple[int, int, int]:
    """(R, d_in, d_out) per sample for the cost model; d_in = vocabulary size for embeddings."""
    w = use.args["weight"] if use.args.get("weight") is not None else use.args["bias"]
    y = use.out
    assert y is not None
    if use.kind == "linear":
        return y[0].numel() // y.shape[-1], w.shape[1], w.shape[0]
    if use.kind == "embedding":
        return y[0].numel() // y.shape[-1], w.shape[0], w.shape[1]
    if use.kind in ("layer_norm", "batch_norm"):
        return y[0].numel() // w.numel(), w.numel(), w.numel()
    return y[0].numel() // y.shape[1], w[0].numel(), w.shape[0]
