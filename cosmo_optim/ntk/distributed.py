"""The empirical NTK across the ranks of a ``torch.distributed`` group (docs/theory.md T4).

Private helper of :mod:`cosmo_optim.ntk` (``distributed=True``). Every rank holds the same probe
batch of N samples and takes the contiguous shard ``[N r / W, N (r+1) / W)``. It computes the
per-sample features of its shard (exact per-sample gradients, or their sketches, see
:mod:`cosmo_optim.ntk.sketch`), then the features are exchanged in blocks of parameters
(``all_gather``: the memory of one block's features for all N samples at a time) and each rank
multiplies its rows against every sample: ``Θ[shard, :] = Σ_blocks Φ_shard Φ_allᵀ``. A last
``all_gather`` of the rows gives every rank the same N×N kernel.

Cost per rank, W ranks: forward/backward work of N/W samples; the product N²/W · F (F features
per sample: P for the exact kernel, ≈ L k² for the sketch); communication N · F numbers
received per rank, plus the N×N kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from cosmo_optim._common import MemoryBudgetError, same_on_every_rank
from cosmo_optim.ntk.sketch import FeatureMap, gram

if TYPE_CHECKING:
    from cosmo_optim.ntk.engine import Engine

__all__ = ["kernel"]


def kernel(engine: Engine, k: int | None, seed: int) -> torch.Tensor:
    """The kernel of ``engine``'s request, its samples split across the ranks (module doc)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "Invalid distributed: True without an initialised torch.distributed process "
            "group. Fix: call torch.distributed.init_process_group(...) on every rank first, "
            "or pass distributed=False."
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    _check_same_model(engine)
    N = engine.N
    lo, hi = N * rank // world, N * (rank + 1) // world
    failure: Exception | None = None
    try:  # every check runs on the rank's own shard: a refusal must reach every rank
        fm = FeatureMap(engine, k, seed)
        widths = [fm.width(n) for n in engine.names]
        local = fm.all(lo, hi) if hi > lo else torch.zeros(
            (0, engine.C, sum(widths)), dtype=engine.dtype, device=engine.device)
    except Exception as error:  # re-raised below, on this rank as it was
        failure = error
    _agree(failure)
    sizes = [N * (r + 1) // world - N * r // world for r in range(world)]
    rows = torch.zeros((hi - lo, N, engine.C, engine.C) if engine.full else (hi - lo, N),
                       dtype=engine.dtype, device=engine.device)
    limit = max(engine.free // 4, 1)
    start = 0
    for stop in _blocks(widths, N * engine.C * engine.isz, limit):
        mine = local[:, :, start:stop].contiguous()
        rows += gram(mine, _gather(mine, sizes), engine.full)
        start = stop
    return _gather(rows, sizes)


def _agree(failure: Exception | None) -> None:
    """Raise on every rank when any rank failed to compute its shard's features.

    Without this a rank that refuses the model (a coupled forward, a random one, a budget too
    small) would leave the others waiting forever in the next ``all_gather``. The failing rank
    re-raises its own error; the others raise a RuntimeError naming it (a `MemoryBudgetError`
    if that is what it was, so that a caller falling back to the sketch does so on every rank).
    """
    mine = None if failure is None else (isinstance(failure, MemoryBudgetError),
                                         f"{type(failure).__name__}: {failure}")
    reports: list[tuple[bool, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    if failure is not None:
        raise failure
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, (budget, msg) = failed[0]
        error = MemoryBudgetError if budget else RuntimeError  # every rank: the same kind
        raise error(
            f"distributed=True: rank {rank} could not compute its shard of the kernel, so no "
            f"rank returns one ({msg}). Fix the error reported on rank {rank}."
        )


def _blocks(widths: list[int], bytes_per_feature: int, limit: int) -> list[int]:
    """End offsets of consecutive parameter blocks whose gathered features fit ``limit``."""
    ends, size, pos = [], 0, 0
    for w in widths:
        if size and (size + w) * bytes_per_feature > limit:
            ends.append(pos)
            size = 0
        size, pos = size + w, pos + w
    return [*ends, pos]


def _gather(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``t`` (shard sizes ``sizes`` on dim 0) in rank order."""
    top = max(sizes)
    pad = t.new_zeros((top, *t.shape[1:]))
    pad[: t.shape[0]] = t
    parts = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(parts, pad)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


def _check_same_model(engine: Engine) -> None:
    """Refuse ranks holding different probe batches, weights or buffers: the kernel would be
    of no one model and batch (a checksum of each is gathered, see `same_on_every_rank`)."""
    groups = {"probe batches": engine.x.tensors(),
              "parameters or buffers": list(engine.base.values())}
    for what, tensors in groups.items():
        if not same_on_every_rank(tensors):
            raise ValueError(
                f"Invalid inputs for distributed=True: rank {dist.get_rank()} sees {what} that "
                "differ across ranks (shape or values). Fix: pass the same probe batch (same "
                "samples, same order) and the same model state on every rank (broadcast the "
                "initial weights; under DDP, rank 0's buffers, as DDP does before a forward)."
            )
