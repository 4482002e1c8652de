"""The proof that samples are independent and the forward deterministic (docs/theory.md T4).

Private helper of :mod:`cosmo_optim.ntk`. The per-sample NTK of a batch is defined only if each
sample's output is the one it would have in any batch, and the same at every call. The engine's
passes record every sample's output; :func:`prove_independent` recomputes them in another
arrangement of the batch and compares, at :func:`.guards.coupling_tolerance`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cosmo_optim._common import cast_copy, python_state, restore_python_state
from cosmo_optim.ntk import guards
from cosmo_optim.ntk.per_sample import chunks

if TYPE_CHECKING:
    from cosmo_optim.ntk.forward import Forward

__all__ = ["prove_independent"]


def prove_independent(e: Forward, outputs: Tensor | None, chunk: int, lo: int = 0,
                      hi: int | None = None) -> None:
    """Refuse a model whose samples are coupled, or whose forward is random.

    Every sample's output in the pass (samples ``lo..hi`` in chunks of ``chunk`` in order;
    computed here where no pass recorded them) is compared with its output in a random
    permutation of those samples cut into a batch of one and sub-batches of half the chunk,
    at :func:`guards.coupling_tolerance`: each sample then has other companions, another
    position and another batch size; sample 0 is also compared with the scout's batch of
    one (the per-sample Jacobian runs samples alone). A float32 mismatch is recomputed on a
    float64 copy of the model (outputs that cancel round by more than their own scale); one
    that survives is recomputed in both arrangements: outputs that change on the same samples
    are a random forward, not a coupling. ``outputs`` (hi - lo, C): the samples' outputs as a
    pass computed them, in chunks of ``chunk`` (None: computed here). Costs one forward
    without graph (two without ``outputs``).
    """
    hi = e.N if hi is None else hi
    if hi - lo < 2:
        return
    chunk = max(2, min(chunk, hi - lo))
    order = torch.arange(lo, hi, device=e.x.device)
    gen = torch.Generator().manual_seed(hi - lo)
    perm = lo + torch.randperm(hi - lo, generator=gen).to(e.x.device)
    with torch.no_grad():
        reference = _arranged(e, order, chunk) if outputs is None else outputs
        other = _arranged(e, perm, chunk // 2, first=1)
        tol = guards.coupling_tolerance(e.precision, e.device)
        err = guards.coupling_error(reference[perm - lo], other)
        if lo == 0 and e.alone is not None:
            err = max(err, guards.coupling_error(reference[:1], e.alone))
        if err <= tol or _rounding_only(e, order, perm, chunk):
            return
        again = max(guards.coupling_error(reference, _arranged(e, order, chunk)),
                    guards.coupling_error(other, _arranged(e, perm, chunk // 2, first=1)))
    guards.refuse_randomness(guards.random_states(e.device), e.device, (), again, tol,
                             e.causes)
    raise ValueError(guards.coupled_error_message(err, tol, e.causes))


def _cuts(n: int, size: int, first: int) -> list[tuple[int, int]]:
    """Sub-batches of ``size`` over ``n`` samples, after one of ``first`` when given."""
    cuts = [(0, first)] if first else []
    return cuts + [(first + a, first + b) for a, b in chunks(n - first, size) if b > a]


def _rounding_only(e: Forward, order: Tensor, perm: Tensor, chunk: int) -> bool:
    """True if a mismatch of the coupling proof vanishes in float64: the model's
    outputs cancel (|f| far below the terms that make it), and the two arrangements round
    differently. Recomputes both arrangements on a float64 copy of the model."""
    if e.precision == torch.float64:
        return False
    try:
        return _float64_agrees(e, order, perm, chunk)
    except (RuntimeError, NotImplementedError, TypeError):  # e.g. int8 kernels refuse float64
        return False  # no float64 rerun: the mismatch stands


def _float64_agrees(e: Forward, order: Tensor, perm: Tensor, chunk: int) -> bool:
    twin, _ = cast_copy(e.model, {}, torch.float64)
    if twin is e.model:
        return False  # no copy: the mismatch stands
    state = python_state(twin)
    x = e.x.to(dtype=torch.float64)

    def outputs(idx: Tensor, size: int, first: int) -> Tensor:
        parts = []
        for a, b in _cuts(idx.shape[0], size, first):
            restore_python_state(state, fresh=True)
            sub = x[idx[a:b]].clone()
            parts.append(e.select(sub.call(twin), sub))
        return torch.cat(parts)

    with torch.no_grad():
        reference = outputs(order, chunk, 0)
        err = guards.coupling_error(reference[perm - order[0]], outputs(perm, chunk // 2, 1))
        err = max(err, guards.coupling_error(reference[:1], outputs(order[:1], 1, 0)))
    return err <= guards.coupling_tolerance(torch.float64, e.x.device)


def _arranged(e: Forward, order: Tensor, size: int, first: int = 0) -> Tensor:
    """Outputs (len(order), C) of samples ``order`` run in sub-batches of ``size`` (after
    one of ``first`` samples, when given)."""
    return torch.cat([e.call(e.leaves, e.x[order[a:b]])
                      for a, b in _cuts(order.shape[0], size, first)])
