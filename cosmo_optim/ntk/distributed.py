"""The empirical NTK across the ranks of a ``torch.distributed`` group (docs/theory.md T4).

Private helper of :mod:`cosmo_optim.ntk` (``distributed=True``). Every rank holds the same probe
batch of N samples and takes the contiguous shard ``[N r / W, N (r+1) / W)``. It computes the
exact per-sample features of its shard (:class:`FeatureMap`: the per-sample gradients
``φ_i = ∂f_i/∂θ``, (C, P) per sample, from the structured rules where they hold and the
per-sample Jacobian elsewhere), then the features are exchanged in blocks of parameters
(``all_gather``: the memory of one block's features for all N samples at a time) and each rank
multiplies its rows against every sample: ``Θ[shard, :] = Σ_blocks Φ_shard Φ_allᵀ``. A last
``all_gather`` of the rows gives every rank the same N×N kernel.

Cost per rank, W ranks: forward/backward work of N/W samples; the product N²/W · P;
communication N · C · P numbers received per rank, plus the N×N kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from cosmo_optim._common import MemoryBudgetError, same_on_every_rank
from cosmo_optim.ntk import coupling, rules
from cosmo_optim.ntk.forward import Forward
from cosmo_optim.ntk.inputs import ModelInputs
from cosmo_optim.ntk.per_sample import PerSampleJacobian, block

__all__ = ["FeatureMap", "agreed", "check_same_model", "kernel"]


class FeatureMap:
    """Exact per-sample features of samples ``[lo, hi)`` for every selected parameter: the
    per-sample gradients of a parameter whose rule holds on the chunk (the same run-time
    checks as the exact kernel's), its per-sample Jacobian rows otherwise."""

    def __init__(self, fwd: Forward, budget: int, full: bool) -> None:
        self.fwd, self.budget, self.full = fwd, budget, full
        self.act = (2 + 2 * fwd.C) * fwd.out_bytes  # as the exact kernel's Jacobian
        self.widths = [fwd.base[n].numel() for n in fwd.names]
        self.jacobian = PerSampleJacobian(fwd.call, dict(fwd.base), fwd.x, fwd.C, fwd.vmap_ok,
                                          fwd.dtype, fwd.tolerance)
        self.free = budget

    def chunk(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """(hi - lo, C, P) features of samples ``[lo, hi)`` and their outputs (hi - lo, C)."""
        fwd, n = self.fwd, hi - lo
        recorder, f = fwd.recorded(fwd.x[lo:hi])
        uses = recorder.uses
        ok = {m for m in fwd.structured if len(uses[m]) == len(fwd.uses[m])
              and rules.qualifies(uses[m], n)}
        outs = {id(u.out): u.out for m in ok for u in uses[m] if u.out is not None}
        delta = fwd.cotangents(f, outs, retain=True)  # (C, *y.shape) per output reaching f
        foreign = fwd.foreign(f, outs, delta)
        ok = {m for m in ok if all(id(u.out) in delta and id(u.out) not in foreign
                                   for u in uses[m])}
        out = torch.empty((n, fwd.C, sum(self.widths)), dtype=fwd.dtype, device=fwd.device)
        at = 0
        for m, width in zip(fwd.names, self.widths, strict=True):
            phi = rules.per_sample_grads(uses[m], delta) if m in ok else \
                self.jacobian.rows([m], lo, hi)
            out[:, :, at : at + width] = phi.detach()
            at += width
        return out, f.detach()

    def all(self, lo: int, hi: int) -> Tensor:
        """Features of samples ``[lo, hi)`` in chunks that fit the memory budget; the samples
        proven independent on the outputs the chunks computed."""
        fwd = self.fwd
        feat_bytes = (hi - lo) * fwd.C * sum(self.widths) * fwd.isz
        kernel_bytes = fwd.N * fwd.N * (fwd.C * fwd.C if self.full else 1) * fwd.isz
        free = self.budget - kernel_bytes - feat_bytes
        if free < self.act:
            need = kernel_bytes + feat_bytes + self.act
            raise MemoryBudgetError(
                f"Invalid memory_budget: {self.budget!r} bytes; the features need at least "
                f"{need} (kernel {kernel_bytes}, features {feat_bytes}). Fix: "
                f"memory_budget={need} or more, or use fewer samples."
            )
        self.free = free
        m = max(2, free // 2 // self.act)
        parts = [self.chunk(a, min(a + m, hi)) for a in range(lo, hi, m)]
        coupling.prove_independent(fwd, torch.cat([o for _, o in parts]), m, lo, hi)
        return torch.cat([p for p, _ in parts])


def _group() -> tuple[int, int]:
    """(rank, world size), or a ValueError when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "Invalid distributed: True without an initialised torch.distributed process "
            "group. Fix: call torch.distributed.init_process_group(...) on every rank first, "
            "or pass distributed=False."
        )
    return dist.get_rank(), dist.get_world_size()


def agreed(scout: Callable[[], Forward]) -> Forward:
    """``scout()`` on every rank; a refusal on any rank is raised on every rank."""
    _group()
    fwd, failure = None, None
    try:
        fwd = scout()
    except Exception as error:  # re-raised by _agree, on this rank as it was
        failure = error
    _agree(failure)
    assert fwd is not None
    return fwd


def kernel(fwd: Forward, budget: int, full: bool) -> Tensor:
    """The kernel of the request, its samples split across the ranks (module doc); the
    features of this rank's shard, any rank's refusal raised on every rank.

    Every rank enters every collective the same number of times with the same shapes: the
    parameter blocks come from the smallest free memory of any rank (agreed with the
    refusals), and a rank whose product fails inside the gather loop keeps gathering and
    raises after the loop, with the others, instead of leaving them waiting in a collective.
    """
    rank, world = _group()
    N = fwd.N
    lo, hi = N * rank // world, N * (rank + 1) // world
    widths = [fwd.base[n].numel() for n in fwd.names]
    local = torch.zeros((0, fwd.C, sum(widths)), dtype=fwd.dtype, device=fwd.device)
    free, failure = budget, None
    try:  # every check runs on the rank's own shard: a refusal must reach every rank
        fm = FeatureMap(fwd, budget, full)
        if hi > lo:
            local = fm.all(lo, hi)
        free = fm.free
    except Exception as error:  # re-raised by _agree, on this rank as it was
        failure = error
    limit = max(min(_agree(failure, free)) // 4, 1)
    sizes = [N * (r + 1) // world - N * r // world for r in range(world)]
    rows = torch.zeros((hi - lo, N, fwd.C, fwd.C) if full else (hi - lo, N),
                       dtype=fwd.dtype, device=fwd.device)
    start = 0
    for stop in _blocks(widths, N * fwd.C * fwd.isz, limit):
        mine = local[:, :, start:stop].contiguous()
        theirs = _gather(mine, sizes)
        if failure is None:
            try:
                rows += block(mine, theirs, full)
            except Exception as error:  # raised after the loop, on every rank
                failure = error
        start = stop
    _agree(failure, free)
    return _gather(rows, sizes)


def _agree(failure: Exception | None, free: int = 0) -> list[int]:
    """Raise on every rank when any rank failed; else every rank's ``free`` bytes.

    Without this a rank that refuses the model (a coupled forward, a random one, a budget too
    small) would leave the others waiting forever in the next ``all_gather``. The failing rank
    re-raises its own error; the others raise a RuntimeError naming it (a `MemoryBudgetError`
    if that is what it was, so that every rank sees the same kind of error).
    """
    mine = None if failure is None else (isinstance(failure, MemoryBudgetError),
                                         f"{type(failure).__name__}: {failure}")
    reports: list[tuple[tuple[bool, str] | None, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, (mine, free))
    if failure is not None:
        raise failure
    failed = [(rank, r[0]) for rank, r in enumerate(reports) if r is not None and r[0]]
    if failed:
        rank, (budget, msg) = failed[0]
        error = MemoryBudgetError if budget else RuntimeError  # every rank: the same kind
        raise error(
            f"distributed=True: rank {rank} could not compute its shard of the kernel, so no "
            f"rank returns one ({msg}). Fix the error reported on rank {rank}."
        )
    return [r[1] for r in reports if r is not None]


def _blocks(widths: list[int], bytes_per_feature: int, limit: int) -> list[int]:
    """End offsets of consecutive parameter blocks whose gathered features fit ``limit``."""
    ends, size, pos = [], 0, 0
    for w in widths:
        if size and (size + w) * bytes_per_feature > limit:
            ends.append(pos)
            size = 0
        size, pos = size + w, pos + w
    return [*ends, pos]


def _gather(t: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``t`` (shard sizes ``sizes`` on dim 0) in rank order."""
    top = max(sizes)
    pad = t.new_zeros((top, *t.shape[1:]))
    pad[: t.shape[0]] = t
    parts = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(parts, pad)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


def check_same_model(x: ModelInputs, tensors: list[Tensor]) -> None:
    """Refuse ranks holding different probe batches, weights or buffers: the kernel would be
    of no one model and batch (a checksum of each is gathered, see `same_on_every_rank`)."""
    _group()
    groups = {"probe batches": x.tensors(), "parameters or buffers": tensors}
    for what, held in groups.items():
        if not same_on_every_rank(held):
            raise ValueError(
                f"Invalid inputs for distributed=True: rank {dist.get_rank()} sees {what} that "
                "differ across ranks (shape or values). Fix: pass the same probe batch (same "
                "samples, same order) and the same model state on every rank (broadcast the "
                "initial weights; under DDP, rank 0's buffers, as DDP does before a forward)."
            )
