"""Private helpers shared by the public modules: argument checks, training flags, threads, and
the guard that leaves a user's model, buffers and random state exactly as they were.

Nothing here is public API; public modules import from here, never from each other's
underscore names.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import random
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "MemoryBudgetError", "ModuleState", "PythonState", "carried_state", "cast_copy", "check_int",
    "one_thread", "parse_bytes", "preserved", "python_state", "restore_python_state",
    "same_on_every_rank", "sample_rows", "training", "unwrap_parallel",
]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


class MemoryBudgetError(ValueError):
    """An NTK request that cannot be computed within its ``memory_budget``; raised before
    anything large is allocated. A monitor raises it at its first reading and skips a later
    reading that raises it (cosmo_optim/monitor/guard.py).
    Public as ``cosmo_optim.MemoryBudgetError``."""


def check_int(name: str, value: Any, least: int, fix: str) -> int:
    """``value`` as an int if it is an integer ≥ ``least`` (NumPy's and other `numbers.Integral`
    too; bools refused), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"Invalid {name}: {value!r}; it must be an integer ≥ {least}. {fix}")
    return int(value)


def sample_rows(out: Any, n: int) -> torch.Tensor:
    """``out``, what a model returned for ``n`` samples, if it is a tensor of ``n`` rows (the
    outputs the loss is applied to, one row per sample); else a ValueError naming it."""
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
        kind = (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                else type(out).__name__)
        raise ValueError(
            f"Invalid model outputs: {kind}, not a Tensor with one row per sample ({n}). "
            "Fix: wrap the model so that it returns the outputs the loss is applied to, e.g. "
            "lambda: model(**batch).logits in an nn.Module."
        )
    return out


def parse_bytes(name: str, value: Any) -> int:
    """A memory size in bytes from an int, a float or a string such as ``"1GB"``/``"512MiB"``.

    Decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units, case-insensitive. NaN,
    infinities, zero, negatives, bools and unknown units are refused with a ValueError.
    """
    size: float | None = None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if match and match.group(2).lower() in _UNITS:
            size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        size = float(value)
    if size is None or not math.isfinite(size) or size < 1:
        raise ValueError(
            f"Invalid {name}: {value!r}; it must be a positive number of bytes, as an int, a "
            "float or a string like '1GB' or '512MiB'. Fix: e.g. memory_budget='2GiB'."
        )
    return int(size)


@contextlib.contextmanager
def training(model: nn.Module, mode: bool) -> Iterator[None]:
    """Every submodule in train (``mode=True``) or eval mode; each module's own flag restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run small CPU kernels on one intra-op thread, then restore the count.

    Probe-sized problems (an (N·C)² eigendecomposition, per-step autograd calls of a
    prediction) are faster on one thread, and multi-threaded LAPACK on a busy machine can be
    a hundred times slower (OpenMP oversubscription). Training itself is never affected.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


_PLAIN = (int, float, bool, str, bytes, tuple, type(None))
_CONTAINERS = (list, dict, set)


class ModuleState(NamedTuple):
    """One module's attributes outside its parameters and buffers: plain values (shallow
    copies of containers) and tensors (the object, its version counter and a copy)."""

    name: str
    module: nn.Module
    plain: dict[str, Any]
    tensors: dict[str, tuple[torch.Tensor, int, torch.Tensor]]


PythonState = list[ModuleState]


def _version(t: torch.Tensor) -> int:
    return -1 if t.is_inference() else t._version  # inference tensors keep no counter


def _kept(name: str, value: Any) -> bool:
    """Attributes a forward may count or cache in place: plain public values, and tensors."""
    if isinstance(value, torch.Tensor):
        return not isinstance(value, nn.Parameter)
    return not name.startswith("_") and name != "training" and isinstance(
        value, _PLAIN + _CONTAINERS)


def python_state(model: nn.Module) -> PythonState:
    """The attributes of every submodule that are neither parameters nor buffers: plain
    numbers, strings, tuples, None, shallow copies of lists, dicts and sets, and tensors
    (a KV cache or a recurrent state held as attributes, the old spectral-norm ``weight``):
    what a forward may count, cache or carry to the next call."""
    state = []
    for name, m in model.named_modules():
        plain, tensors = {}, {}
        for k, v in vars(m).items():
            if not _kept(k, v):
                continue
            if isinstance(v, torch.Tensor):
                with torch.no_grad():
                    tensors[k] = (v, _version(v), v.detach().clone())
            else:
                plain[k] = copy.copy(v) if isinstance(v, _CONTAINERS) else v
        state.append(ModuleState(name, m, plain, tensors))
    return state


def restore_python_state(state: PythonState, fresh: bool = False) -> None:
    """Put back the attributes of :func:`python_state` and drop those added since (a counter
    incremented, a cache filled or created by a forward). Tensors are rebound to the same
    objects, their values restored if written in place; with ``fresh``, to new copies of
    their values instead, so that a forward writing into one never changes a tensor that an
    earlier forward's graph saved (nor the user's): the engine's forwards run so."""
    for _, m, plain, tensors in state:
        attrs = vars(m)
        for k in [k for k, v in attrs.items()
                  if k not in plain and k not in tensors and _kept(k, v)]:
            del attrs[k]
        for k, v in plain.items():
            attrs[k] = copy.copy(v) if isinstance(v, _CONTAINERS) else v
        for k, (t, version, saved) in tensors.items():
            if fresh:
                attrs[k] = saved.clone()
                continue
            attrs[k] = t
            if _version(t) != version:
                with torch.no_grad():
                    t.copy_(saved)


def carried_state(state: PythonState, changed_only: bool = True) -> list[str]:
    """Tensor attributes a forward replaced or wrote since :func:`python_state` (all of them
    with ``changed_only=False``), each as ``module 'name' attribute 'h' (shape)``: a state
    carried from call to call (a recurrent state, a cache)."""
    found = []
    for name, m, _, tensors in state:
        attrs = vars(m)
        for k, (t, _, saved) in tensors.items():
            now = attrs.get(k)
            same = isinstance(now, torch.Tensor) and now.shape == saved.shape and \
                now.dtype == saved.dtype and bool(torch.equal(now.detach(), saved))
            if not changed_only or not same:
                found.append(f"module {name or 'model'!r} attribute {k!r} "
                             f"(shape {tuple(t.shape)})")
    return found


@contextlib.contextmanager
def preserved(model: nn.Module, device: torch.device | None = None) -> Iterator[None]:
    """Leave ``model``'s buffers, its modules' other attributes (counters, caches, tensors held
    as attributes: :func:`python_state`) and every random state (torch, CUDA on ``device``,
    NumPy, Python) exactly as they were, whatever runs inside (BatchNorm statistics,
    spectral-norm power iterations, dropout draws, a recurrent state)."""
    plain = python_state(model)
    buffers = [(m, name, b, b.detach().clone()) for m in model.modules()
               for name, b in m._buffers.items() if b is not None]
    devices = [device] if device is not None and device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
        restore_python_state(plain)
        with torch.no_grad():
            for m, name, b, saved in buffers:
                m._buffers[name] = b  # a forward may rebind a buffer (self.n = self.n + 1)
                if not torch.equal(b, saved):
                    b.copy_(saved)


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` wrappers: their forward
    runs collectives and buffer broadcasts, which probes (run a different number of times on
    each rank) must not trigger; the wrapped module holds the same parameters."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def same_on_every_rank(tensors: list[torch.Tensor]) -> bool:
    """Whether every rank of the ``torch.distributed`` group holds the same ``tensors`` (shapes
    and values; a collective: every rank must call it). Compares a fingerprint per tensor: its
    size, sum and a sum weighted by a hash of each entry's position, so that permuted or
    swapped entries differ too."""
    import torch.distributed as dist

    rows = []
    for t in tensors:
        flat = t.detach().reshape(-1).to(torch.float64)
        index = torch.arange(flat.numel(), device=flat.device)
        weights = ((index * 2654435761) % 65521).to(torch.float64) + 1.0
        rows.append(torch.stack([flat.new_tensor(float(flat.numel())), flat.sum(),
                                 flat @ weights]))
    mine = torch.stack(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return all(torch.equal(p, parts[0]) for p in parts)


def cast_copy(model: nn.Module, selected: dict[str, nn.Parameter],
               dtype: torch.dtype | None) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """A copy of ``model`` whose floating parameters and buffers are in ``dtype`` (the user's
    module is untouched), so that code running outside ``forward`` sees the cast weights too:
    the recompute of ``torch.utils.checkpoint(use_reentrant=False)`` runs in backward, on the
    module's own weights. It holds what casting the engine's views held. Without a cast, or
    for a model that cannot be deep-copied, the model itself (its views are cast)."""
    tensors = [*model.parameters(), *model.buffers()]
    if dtype is None or all(not t.is_floating_point() or t.dtype == dtype for t in tensors):
        return model, selected

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype) if t.is_floating_point() else t.detach().clone()

    memo: dict[int, Any] = {id(b): cast(b) for b in model.buffers()}
    memo |= {id(p): nn.Parameter(cast(p), requires_grad=p.requires_grad)
             for p in model.parameters()}
    try:
        twin = copy.deepcopy(model, memo)
    except Exception:  # any model deepcopy refuses keeps the casts of its views
        return model, selected
    named = dict(twin.named_parameters())
    return twin, {n: named[n] for n in selected}
