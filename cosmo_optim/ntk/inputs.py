"""A probe batch as the model takes it: one tensor, positional arguments, keyword arguments.

The empirical NTK is a kernel between samples (docs/theory.md T4), so the engine must run the
model on any subset of the probe batch: sample 0 alone, chunks of m samples, a permutation.
:class:`ModelInputs` holds the batch as the model is called, ``model(*args, **kwargs)``, and
knows which tensors carry the samples (along their batch dimension) and which are shared by
every sample (a diffusion timestep given as a scalar, a mask of another length, an option).
It is the one code path for every caller of the engine: :func:`cosmo_optim.empirical_ntk`,
:func:`cosmo_optim.ntk_eigen`, and the dual, the advice and the monitor through them.

>>> ids, mask = torch.zeros(4, 7, dtype=torch.long), torch.ones(4, 7)
>>> batch = ModelInputs({"input_ids": ids, "attention_mask": mask})
>>> len(batch), tuple(batch[1:3].kwargs["input_ids"].shape)
(4, (2, 7))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BatchDim", "ModelInputs"]

#: Where the samples are: one dim for every tensor, or per argument (a keyword's name or a
#: positional index) a dim, or None for an argument shared by every sample.
BatchDim = int | Mapping[str | int, int | None]

Index = slice | Tensor


class ModelInputs:
    """The probe batch of N samples as the model takes it: ``model(*args, **kwargs)``.

    Args:
        inputs: a tensor (one positional argument), a tuple (positional arguments), a dict
            or other mapping such as a Hugging Face ``BatchEncoding`` (keyword arguments), or
            a :class:`ModelInputs`. Values may be tensors, nested tuples, lists or dicts of
            tensors, or anything else (passed to every call as it is).
        kwargs: keyword arguments beside positional ``inputs``: ``model(x, mask=m)`` is
            ``ModelInputs((x,), {"mask": m})``.
        batch_dim: the dimension that holds the samples, for every tensor (default 0), or a
            mapping from argument (a keyword's name, a positional index) to its dimension or
            ``None`` for an argument shared by every sample; arguments it does not name use
            dim 0. A tensor is batched when its length along its dimension is N, the length of
            the first batched argument; others (a 0-d timestep, a mask of another length) are
            shared. Declare ``None`` for a shared tensor whose length happens to be N.

    Raises:
        ValueError: inputs of another kind (a list: positional arguments go in a tuple), no
            tensor with samples, no sample, or a declared argument that is not there.

    Which tensors are batched is decided once, on the whole batch; a subset (``inputs[idx]``)
    keeps that decision. Integer tensors (token ids, labels) keep their dtype in :meth:`to`.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dims: list[int | None]  # per tensor, in argument order: its batch dim, None if shared
    n: int
    index: Tensor  # (n,) positions of these samples in the probe batch

    def __init__(self, inputs: Any, kwargs: Mapping[str, Any] | None = None, *,
                 batch_dim: BatchDim | None = None) -> None:
        if isinstance(inputs, ModelInputs) and kwargs is None and batch_dim is None:
            self.args, self.kwargs, self.dims = inputs.args, inputs.kwargs, inputs.dims
            self.n, self.index = inputs.n, inputs.index
            return
        if isinstance(inputs, ModelInputs):
            inputs, kwargs = inputs.args, {**inputs.kwargs, **(kwargs or {})}
        args: tuple[Any, ...]
        if isinstance(inputs, Tensor):
            args = (inputs,)
        elif isinstance(inputs, tuple):
            args = inputs
        elif isinstance(inputs, Mapping) and kwargs is None:
            args, kwargs = (), inputs
        else:
            raise ValueError(_kind_error(inputs))
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValueError(f"Invalid kwargs: a {type(kwargs).__name__}; it must be a dict of "
                             "keyword arguments. Fix: ModelInputs((x,), {'mask': mask}).")
        self.args, self.kwargs = args, dict(kwargs or {})
        per_arg = _arg_dims(self.args, self.kwargs, 0 if batch_dim is None else batch_dim)
        tensors = [(key, t) for key, v in _items(self.args, self.kwargs) for t in _leaves(v)]
        self.n = _count(tensors, per_arg)
        self.dims = [d if d is not None and _holds(t, d, self.n) else None
                     for d, (_, t) in ((per_arg[key], (key, t)) for key, t in tensors)]
        self.index = torch.arange(self.n, device=self.device)

    def _with(self, fn: Callable[[Tensor, int | None], Tensor], n: int | None = None,
              index: Tensor | None = None) -> ModelInputs:
        """A copy with ``fn(tensor, batch dim or None)`` for every tensor."""
        dims = iter(self.dims)
        new = ModelInputs.__new__(ModelInputs)
        new.args = tuple(_map(v, lambda t: fn(t, next(dims))) for v in self.args)
        new.kwargs = {k: _map(v, lambda t: fn(t, next(dims))) for k, v in self.kwargs.items()}
        new.dims, new.n = self.dims, self.n if n is None else n
        new.index = self.index if index is None else index
        return new

    # ----------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        shown = [f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
                 + (" shared" if d is None else f" dim {d}")
                 for t, d in zip(self.tensors(), self.dims, strict=True)]
        return f"ModelInputs(N={self.n}: " + ", ".join(shown) + ")"

    @property
    def device(self) -> torch.device:
        """The device of the first batched tensor."""
        return self.batched()[0].device

    def tensors(self) -> list[Tensor]:
        """Every tensor the model receives, batched and shared, in argument order."""
        return [t for _, v in _items(self.args, self.kwargs) for t in _leaves(v)]

    def batched(self) -> list[Tensor]:
        """The tensors that hold the samples (each along its batch dimension)."""
        return [t for t, d in zip(self.tensors(), self.dims, strict=True) if d is not None]

    def call(self, model: Callable[..., Any]) -> Any:
        """``model(*args, **kwargs)``."""
        return model(*self.args, **self.kwargs)

    # ---------------------------------------------------------------------------- subsets
    def __getitem__(self, index: Index | int | Sequence[int]) -> ModelInputs:
        """The samples ``index`` (a slice, positions, a boolean mask), in that order: batched
        tensors indexed along their batch dimension, shared values as they are."""
        if isinstance(index, int):
            index = slice(index, index + 1 or None)
        if not isinstance(index, slice):
            index = torch.as_tensor(index, device=self.index.device)
            if index.dtype == torch.bool:
                index = index.nonzero().reshape(-1)
        picked = self.index[index]
        return self._with(lambda t, d: t if d is None else _take(t, d, index), len(picked),
                          picked)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> ModelInputs:
        """Every tensor on ``device``, and floating ones in ``dtype`` (integers kept)."""
        def move(t: Tensor, _: int | None) -> Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else None
            return t.to(device=device, dtype=cast)
        return self._with(move, index=self.index.to(device))

    def clone(self) -> ModelInputs:
        """A copy of every tensor, outside any inference mode (a forward that writes into its
        inputs must not reach the caller's, and autograd cannot save inference tensors)."""
        with torch.inference_mode(False):
            return self._with(lambda t, _: t.clone(), index=self.index.clone())

    def for_model(self, model: nn.Module) -> ModelInputs:
        """On the device of ``model``'s first floating parameter, floating tensors in its dtype
        (a float64 batch for a float32 model); a model without one: unchanged."""
        p = next((q for q in model.parameters() if q.is_floating_point()), None)
        return self if p is None else self.to(p.device, p.dtype)

    # -------------------------------------------------------------------- per-sample maps
    def unbatched(self) -> tuple[list[Tensor], list[int], Callable[[list[Tensor]], ModelInputs]]:
        """For ``torch.func.vmap`` over samples: the batched tensors and the sample positions
        (last), their batch dims, and a function from one sample's slices (the batch dim
        removed, as vmap passes them) to the :class:`ModelInputs` of that one sample."""
        dims = [d for d in self.dims if d is not None] + [0]

        def one(slices: list[Tensor]) -> ModelInputs:
            it = iter([s.unsqueeze(d) for s, d in zip(slices, dims, strict=True)])
            single = self._with(lambda t, d: t if d is None else next(it), 1)
            single.index = next(it)
            return single

        return [*self.batched(), self.index], dims, one


def _kind_error(inputs: Any) -> str:
    kind = type(inputs).__name__
    hint = ("pass a tuple for several positional arguments, or torch.stack(samples) for a "
            "list of samples" if isinstance(inputs, list) else
            "pass a tensor, a tuple of positional arguments or a dict of keyword arguments")
    return (f"Invalid inputs: a {kind}; the probe batch is what the model is called with: a "
            "tensor, a tuple (positional arguments) or a dict (keyword arguments), with the "
            f"samples along a batch dimension. Fix: {hint}.")


def _items(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str | int, Any]]:
    return [*enumerate(args), *kwargs.items()]


def _arg_dims(args: tuple[Any, ...], kwargs: dict[str, Any],
              batch_dim: BatchDim) -> dict[str | int, int | None]:
    """Each argument's batch dim (None: shared) from ``batch_dim``, checked."""
    keys: list[str | int] = [*range(len(args)), *kwargs]
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, (int, Mapping)):
        raise ValueError(
            f"Invalid batch_dim: {batch_dim!r}; it must be an int (every tensor's sample "
            "dimension) or a dict from argument to dimension (None: shared by every sample). "
            "Fix: e.g. batch_dim=0 or batch_dim={'timestep': None}."
        )
    if isinstance(batch_dim, int):
        return dict.fromkeys(keys, batch_dim)
    unknown = [k for k in batch_dim if k not in keys]
    bad = {k: d for k, d in batch_dim.items()
           if d is not None and (isinstance(d, bool) or not isinstance(d, int))}
    if unknown or bad:
        raise ValueError(
            f"Invalid batch_dim: {dict(batch_dim)!r}; "
            + (f"{unknown} are not arguments of the batch (arguments {keys}). " if unknown
               else f"dims {bad} are not ints or None. ")
            + "Fix: name keyword arguments by key and positional ones by index, each with an "
            "int dimension or None (shared by every sample)."
        )
    return {k: batch_dim.get(k, 0) for k in keys}


def _count(tensors: list[tuple[str | int, Tensor]], dims: dict[str | int, int | None]) -> int:
    """N: the length along its batch dim of the first tensor that has that dim."""
    for key, t in tensors:
        d = dims[key]
        if d is not None and -t.dim() <= d < t.dim():
            if t.shape[d] == 0:
                raise ValueError(
                    f"Invalid inputs: argument {key!r} has shape {tuple(t.shape)}, no sample "
                    "along its batch dimension; the kernel needs N >= 1 samples."
                )
            return int(t.shape[d])
    raise ValueError(
        "Invalid inputs: no tensor holds samples (every tensor is 0-d or declared shared, or "
        "there is none); the kernel is between samples along a batch dimension. Fix: pass "
        "the batch as tensors with the samples on dim 0 (or declare batch_dim)."
    )


def _holds(t: Tensor, d: int, n: int) -> bool:
    """True if tensor ``t`` carries the n samples along dim ``d``."""
    return -t.dim() <= d < t.dim() and t.shape[d] == n


def _take(t: Tensor, d: int, index: Index) -> Tensor:
    if isinstance(index, slice):
        return t[(slice(None),) * (d % t.dim()) + (index,)]
    return t.index_select(d, index.to(t.device))


def _leaves(v: Any) -> list[Tensor]:
    """The tensors of a value, nested tuples, lists and dicts searched in order."""
    if isinstance(v, Tensor):
        return [v]
    if isinstance(v, (tuple, list)):
        return [t for x in v for t in _leaves(x)]
    if isinstance(v, dict):
        return [t for x in v.values() for t in _leaves(x)]
    return []


def _map(v: Any, fn: Callable[[Tensor], Any]) -> Any:
    """The value with ``fn`` applied to every tensor of it, in :func:`_leaves` order."""
    if isinstance(v, Tensor):
        return fn(v)
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # a NamedTuple
        return type(v)(*(_map(x, fn) for x in v))
    if isinstance(v, (tuple, list)):
        return type(v)(_map(x, fn) for x in v)
    if isinstance(v, dict):
        return {k: _map(x, fn) for k, x in v.items()}
    return v
