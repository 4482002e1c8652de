"""Sharded models (FSDP2 ``fully_shard``, FSDP1 ``use_orig_params=True``) as the engine sees them.

Private helper of :mod:`cosmo_optim.ntk`. The kernel ``Θ = Σ_p J_p J_pᵀ`` needs every sample's
gradient with respect to every selected parameter, so every rank needs the whole forward:
the parameters are **gathered as FSDP's own forward gathers them** (an all-gather per
parameter, FSDP2's ``DTensor.full_tensor()``, FSDP1's ``summon_full_params``), and the engine
runs the model's own modules on those full values, with FSDP's forward hooks (FSDP2) or
wrappers (FSDP1) set aside for the call and put back after it. Memory: the full parameters on
every rank (P numbers in the parameters' dtype, what ``summon_full_params`` holds) beside the
engine's own plan; communication: one all-gather of the parameters per call. Every rank must
call (collectives), each with its own probe batch, and gets the kernel of its batch;
``distributed=True`` splits one batch across the ranks instead. The user's sharded
parameters, their gradients and FSDP's state are never touched.

DeepSpeed ZeRO-3 partitions parameters behind its own hooks; it is refused with a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Unsharded", "materialised", "refuse_zero3", "unsharded"]

_WRAPPED = "_fsdp_wrapped_module"  # FSDP1's attribute holding the module it wraps


def _is_fsdp2_hook(hook: Any) -> bool:
    """A forward hook of FSDP2's state: its bound method, or a function wrapping one."""
    for h in (hook, getattr(hook, "__wrapped__", None)):
        if type(getattr(h, "__self__", None)).__name__ == "FSDPState":
            return True
    return False


def _fsdp1(model: nn.Module) -> bool:
    return hasattr(model, _WRAPPED) and type(model).__name__ == "FullyShardedDataParallel"


def _dtensor(p: Tensor) -> bool:
    return hasattr(p, "full_tensor") and hasattr(p, "placements")


class Unsharded(NamedTuple):
    """A model without FSDP's forward machinery: its module, the full values of its sharded
    parameters by name, and the dtype FSDP's mixed precision casts floating inputs to."""

    module: nn.Module
    values: dict[str, Tensor]
    input_dtype: torch.dtype | None = None


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[Unsharded]:
    """The model as the engine runs it (itself when it is not sharded), for the call."""
    if any(_fsdp1(m) for m in model.modules()):
        with _fsdp1_unwrapped(model) as found:
            yield found
    elif any(_dtensor(p) for p in model.parameters()) or any(
            _is_fsdp2_hook(h) for m in model.modules() for h in m._forward_pre_hooks.values()):
        with _fsdp2_unhooked(model) as found:
            yield found
    else:
        yield Unsharded(model, {})


@contextlib.contextmanager
def _fsdp2_unhooked(model: nn.Module) -> Iterator[Unsharded]:
    """FSDP2: full values by ``DTensor.full_tensor()`` (parameters FSDP holds unsharded at
    the moment, between a forward and its backward, are used as they are), FSDP's forward
    hooks set aside."""
    values = {n: p.detach().full_tensor()  # type: ignore[attr-defined]  # a DTensor
              for n, p in model.named_parameters() if _dtensor(p)}
    policy = _mixed_precision(model)
    if policy is not None:  # FSDP's forward gathers in param_dtype and casts the inputs
        values = {n: v.to(policy) if v.is_floating_point() else v for n, v in values.items()}
    kinds = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
             "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
    saved = [(m, kind, dict(getattr(m, kind))) for m in model.modules() for kind in kinds]
    for m in model.modules():
        fsdp = [k for k, h in m._forward_pre_hooks.items() if _is_fsdp2_hook(h)]
        fsdp += [k for k, h in m._forward_hooks.items() if _is_fsdp2_hook(h)]
        for kind in kinds:
            for k in fsdp:
                getattr(m, kind).pop(k, None)
    try:
        yield Unsharded(model, values, policy)
    finally:
        for m, kind, hooks in saved:
            table = getattr(m, kind)
            table.clear()
            table.update(hooks)


def _mixed_precision(model: nn.Module) -> torch.dtype | None:
    """FSDP2's ``MixedPrecisionPolicy.param_dtype`` of the outermost sharded module, if any
    (its forward runs in that dtype, so the kernel does too)."""
    for m in model.modules():
        state = getattr(m, "_get_fsdp_state", None)
        if callable(state):
            return getattr(getattr(state(), "_mp_policy", None), "param_dtype", None)
    return None


@contextlib.contextmanager
def _fsdp1_unwrapped(model: nn.Module) -> Iterator[Unsharded]:
    """FSDP1: full values from ``summon_full_params``; every wrapper replaced in its parent by
    the module it wraps, so the modules' own forwards run (names lose ``_fsdp_wrapped_module``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    wrappers = [m for m in model.modules() if _fsdp1(m)]
    plain = [w for w in wrappers if not getattr(w, "_use_orig_params", False)]
    if plain:
        raise ValueError(
            "Invalid model: FSDP (FullyShardedDataParallel) with use_orig_params=False holds "
            "its parameters in one FlatParameter per unit, so the model's modules have no "
            "parameters of their own to differentiate. Fix: wrap with "
            "FullyShardedDataParallel(..., use_orig_params=True), or shard with FSDP2's "
            "torch.distributed.fsdp.fully_shard."
        )
    with FSDP.summon_full_params(model, writeback=False, recurse=True):
        values = {n: p.detach().clone() for n, p in model.named_parameters()}
    policy = getattr(getattr(wrappers[0], "mixed_precision", None), "param_dtype", None)
    if policy is not None:  # FSDP's forward runs its units in param_dtype
        values = {n: v.to(policy) if v.is_floating_point() else v for n, v in values.items()}
    swapped = [(parent, name, child) for parent in model.modules()
               for name, child in parent._modules.items() if child is not None and _fsdp1(child)]
    for parent, name, child in swapped:
        parent._modules[name] = getattr(child, _WRAPPED)
    root = model
    while _fsdp1(root):
        root = getattr(root, _WRAPPED)
    try:
        yield Unsharded(root, values, policy)
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child


@contextlib.contextmanager
def materialised(model: nn.Module, values: dict[str, Tensor]) -> Iterator[None]:
    """The full ``values`` registered as the modules' parameters for the call (the sharded
    ones put back after it): the plain module runs its own forward, as for ``verify``."""
    swapped = []
    for name, value in values.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        old = module._parameters[leaf]
        assert old is not None
        module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
        swapped.append((module, leaf, old))
    try:
        yield
    finally:
        for module, leaf, old in swapped:
            module._parameters[leaf] = old


def refuse_zero3(model: nn.Module) -> None:
    """A clear error for DeepSpeed ZeRO-3 partitioned parameters (``ds_id`` attributes)."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise ValueError(
            "Invalid model: its parameters are partitioned by DeepSpeed ZeRO-3, whose hooks "
            "gather and release them inside its own forward, so the engine cannot substitute "
            "and differentiate them. Not supported. Fix: compute the kernel under ZeRO stage "
            "1 or 2 (parameters replicated), or on a consolidated copy of the model "
            "(deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint loaded "
            "into an unsharded instance), or shard with torch's FSDP (supported)."
        )
