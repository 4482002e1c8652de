"""The user's fused fast paths: off for the engine, and proven to compute the same function.

Private helper of :mod:`cosmo_optim.ntk`. ``nn.MultiheadAttention`` and
``nn.TransformerEncoder(Layer)`` in eval mode take PyTorch's fused fast path when nothing in
them requires grad; its backward does not exist, so the engine's forwards run without it
(:func:`no_fastpath`), and :func:`same_function` checks that the user's own forward, fast path
and all, computes the same function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from cosmo_optim._common import python_state, restore_python_state
from cosmo_optim.ntk import guards
from cosmo_optim.ntk.modes import Autocast
from cosmo_optim.ntk.per_sample import chunks

if TYPE_CHECKING:
    from cosmo_optim.ntk.forward import Forward

__all__ = ["no_fastpath", "same_function"]


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    """Keep ``nn.MultiheadAttention`` on ``F.multi_head_attention_forward`` (no fused kernels,
    whose backward the kernel's passes need); :func:`same_function` checks that the
    user's own forward, fast path and all, computes the same function."""
    flag = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(flag)


_FASTPATH = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


def same_function(e: Forward, model: nn.Module, autocast: Autocast) -> None:
    """Refuse a kernel of another function than the user's own forward: modules with a fused
    fast path (``nn.MultiheadAttention``, ``nn.TransformerEncoder(Layer)`` in eval mode) take
    it in the user's forward when nothing in them requires grad, and the engine switches it
    off (its backward passes need the differentiable path); nn.TransformerEncoder's, for one,
    zeroes padded positions. The outputs of both paths must agree at the coupling tolerance.
    Costs two forwards of the probe batch (one with the graph the user's forward builds),
    only for models with such modules in eval mode and with frozen parameters (with gradients
    on, a module whose parameters all require grad never takes its fast path)."""
    fast = [n for n, m in model.named_modules() if isinstance(m, _FASTPATH) and not m.training
            and not all(p.requires_grad for p in m.parameters())]  # else never the fast path
    fast = [n or "model" for n in fast if not any(n.startswith(f"{o}.") for o in fast if o)]
    if not fast or not torch.backends.mha.get_fastpath_enabled():
        return
    state = python_state(e.model)
    ours, theirs = [], []
    try:
        for lo, hi in chunks(e.N, 64):
            with torch.no_grad(), no_fastpath():
                ours.append(e.call({}, e.x[lo:hi]))
            restore_python_state(state, fresh=True)
            sub = e.x[lo:hi].clone().for_model(e.model)
            with autocast():  # the user's forward as it trains: gradients on, fast path as set
                theirs.append(e.select(sub.call(e.model), sub).detach())
    finally:  # a forward that raises leaves the module's counters and caches as they were
        restore_python_state(state)
    err = guards.coupling_error(torch.cat(theirs), torch.cat(ours))
    tol = guards.coupling_tolerance(e.precision, e.device)
    if err > tol:
        raise ValueError(
            f"Invalid model: modules {fast[:4]} take PyTorch's fused fast path in the model's "
            "own forward (eval mode, nothing in them requiring grad), which computes another "
            "function than the differentiable path the kernel needs: the outputs differ by "
            f"{err:.3g} (relative; tolerance {tol:.3g}). nn.TransformerEncoder's fast path, for "
            "one, zeroes the outputs at padded positions (src_key_padding_mask), which the "
            "other path computes. Fix: make the output ignore padded positions (pool over "
            "the unpadded ones only), or build the encoder with enable_nested_tensor=False, "
            "or evaluate without the fast path as well "
            "(torch.backends.mha.set_fastpath_enabled(False))."
        )
