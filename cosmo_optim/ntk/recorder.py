"""The recorder of a forward pass: every torch call that touches a watched parameter.

Private helper of :mod:`cosmo_optim.ntk`. A ``TorchFunctionMode`` watches one forward; a
parameter qualifies for a structured rule (:mod:`.rules`) only if *every* call that touches it
is a call a rule models (``linear``/``conv1d``/``conv2d``/``embedding``/``layer_norm``, eval-mode
``batch_norm``) in the same role (weight or bias), with the sample axis first. Self-attention
calls of ``F.multi_head_attention_forward`` are re-dispatched as ``F.linear`` calls
(:mod:`.attention`), and transformers' ``Conv1D`` (an ``addmm`` on flattened rows) is recorded
as a transposed ``linear``. Anything else (parametrisations, a layer whose input is not
batch-first) sends the parameter to the jacobian path, which is exact for any parameter.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from cosmo_optim.ntk import attention, rules

__all__ = ["UseRecorder"]

# Calls that read metadata only: they never carry a derivative, so they are not "uses".
_METADATA_CALLS = {"dim", "size", "numel", "is_contiguous", "is_floating_point", "stride"}
_METADATA_ATTRS = {
    "dtype", "shape", "device", "requires_grad", "is_nested", "grad_fn", "is_leaf", "ndim",
    "layout", "is_cuda", "is_sparse", "is_quantized", "is_meta", "names",
}


_LINEAR = rules.RULES[F.linear]  # transformers' Conv1D is a transposed linear call

# Calls that flatten the leading dims of a batch-first tensor, as before transformers' Conv1D.
_FLATTENS = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape}


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
        self.uses: dict[str, list[rules.Use]] = {name: [] for name in watched.values()}
        self.flat: dict[int, tuple[Any, int]] = {}  # id(rows) -> (weakref(rows), leading dim)
        self.functions: set[Any] = set()  # every torch function the forward called
        self.out_bytes = 0  # bytes of every tensor the forward produced (activation estimate)
        self.dtypes: set[torch.dtype] = set()  # of the calls that touched a watched parameter

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
        if isinstance(out, Tensor) and out.is_floating_point():
            self.dtypes.add(out.dtype)
        found = rules.RULES.get(func)
        names = found.arguments if found else ()
        bound = dict(zip(names, args, strict=False)) | kwargs
        captured = None
        for key, tensor in hits:
            role = names[key] if isinstance(key, int) and 0 <= key < len(names) else str(key)
            known = found is not None and role in found.roles and found.models(bound)
            known = known and _plain(out) and _plain(bound.get("input"))
            use = rules.Use(found if known else None, role)
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
            use = rules.Use(_LINEAR, role, bound, y, (bound["input"]._version, y._version), call)
            rec.uses[rec.watched[id(t)]].append(use)
    if call not in rec.protect:
        return y.view(-1, w.shape[1])
    rec.out_bytes += y.numel() * y.element_size()
    return y.view(-1, w.shape[1]).clone()  # a copy: in-place edits downstream were seen
