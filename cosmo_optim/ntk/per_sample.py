"""Exact per-sample Jacobians for the NTK engine and its brute-force self-check (docs/theory.md T4).

Private helpers of :mod:`cosmo_optim.ntk`. Parameters without a structured rule get their
per-sample Jacobian rows ``J[i, c, :] = ∂f_ic/∂θ`` here, two ways:

* ``vmap(jacrev)`` over a chunk of samples: fast, but only as exact as torch's batching rules.
  Some rules broadcast wrongly instead of raising (``prelu``), so a forward that calls a
  function in :data:`VMAP_UNSAFE` never takes it, and every new chunk size is checked once
  against the loop below on one sample; a mismatch switches the request to the loop.
* the loop: one sample's forward and ``C`` backward passes at a time. Exact for any module
  whose samples are independent, memory O(C P + one sample's activations).

:func:`verify` recomputes a few kernel entries from the user's own module with plain autograd
(no ``functional_call``, no rule), the reference behind ``empirical_ntk(..., verify=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from cosmo_optim._common import python_state, restore_python_state
from cosmo_optim.ntk.inputs import ModelInputs

__all__ = [
    "TOLERANCE", "VMAP_UNSAFE", "PerSampleJacobian", "accumulate", "block", "chunks", "contract",
    "dense", "gradient_rows", "relative_error", "tolerance", "verify",
]

#: Functions whose ``vmap`` batching rule was seen to return wrong values without raising.
VMAP_UNSAFE = frozenset({torch.prelu})

#: Relative tolerance of a recomputed entry, by compute dtype (rounding of P-term sums).
TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}
_LOW_PRECISION_TOLERANCE = 2e-2

Forward = Callable[[dict[str, Tensor], ModelInputs], Tensor]  # (params, samples) -> f (n, C)


def tolerance(dtype: torch.dtype, device: torch.device | None = None) -> float:
    """Relative tolerance for entries computed in ``dtype`` on ``device``: float32 on a GPU
    that allows TensorFloat-32 matmuls or convolutions (cuDNN's default) rounds to 10 bits,
    so it gets the low-precision tolerance."""
    if dtype == torch.float32 and device is not None and device.type == "cuda" and _tf32():
        return _LOW_PRECISION_TOLERANCE
    return TOLERANCE.get(dtype, _LOW_PRECISION_TOLERANCE)


def _tf32() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def relative_error(a: Tensor, b: Tensor) -> float:
    """``max|a − b| / max|b|`` (0 when both vanish)."""
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


class PerSampleJacobian:
    """Rows ``(n, C, P_block)`` of the per-sample Jacobian for blocks of named parameters."""

    def __init__(self, forward: Forward, base: dict[str, Tensor], x: ModelInputs, C: int,
                 vmap_ok: bool, dtype: torch.dtype, tol: float) -> None:
        self.forward, self.base, self.x, self.C = forward, base, x, C
        self.vmap_ok, self.dtype, self.tol = vmap_ok, dtype, tol
        self._checked: set[int] = set()  # chunk sizes whose vmap rows matched the loop

    def rows(self, block: Sequence[str], lo: int, hi: int) -> Tensor:
        """``∂f_ic/∂θ_block`` for samples ``lo..hi-1``, flattened per parameter and concatenated,
        in the kernel's dtype."""
        if self.vmap_ok:
            rows = self._vmap(block, lo, hi)
            if rows is not None and self._agrees(rows, block, lo, hi):
                return rows
            self.vmap_ok = False
        return torch.cat([self._loop(block, i) for i in range(lo, hi)])

    def _vmap(self, block: Sequence[str], lo: int, hi: int) -> Tensor | None:
        params = {k: self.base[k] for k in block}

        leaves, dims, one = self.x[lo:hi].unbatched()

        def f1(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
            return self.forward(p, one(list(sample))).reshape(-1)

        try:
            with warnings.catch_warnings():  # torch's "no batching rule, slower" notices
                warnings.filterwarnings("ignore", message="There is a performance drop")
                jac = vmap(jacrev(f1), in_dims=(None, *dims))(params, *leaves)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):  # no batching rule
            return None  # (or a selector that fails under vmap): the loop runs the samples
        return torch.cat([jac[k].reshape(hi - lo, self.C, -1) for k in block],
                         dim=2).to(self.dtype)

    def _agrees(self, rows: Tensor, block: Sequence[str], lo: int, hi: int) -> bool:
        """Check the first sample of each new chunk size against the loop, once."""
        if hi - lo in self._checked:
            return True
        exact = self._loop(block, lo)[0]
        ok = relative_error(rows[0], exact) <= self.tol
        if ok:
            self._checked.add(hi - lo)
        return ok

    def _loop(self, block: Sequence[str], i: int) -> Tensor:
        """One sample's forward, then one backward per output component: (1, C, P_block)."""
        leaves = [self.base[k].clone().requires_grad_(True) for k in block]
        f = self.forward(dict(zip(block, leaves, strict=True)), self.x[i : i + 1])
        return gradient_rows(f.reshape(-1), leaves, self.dtype).unsqueeze(0)


def gradient_rows(f: Tensor, params: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """``∂f_c/∂θ`` for every component of a one-sample output ``f`` (C,): (C, P) in ``dtype``,
    zeros where a parameter does not reach ``f``."""
    rows = []
    for c in range(f.shape[0]):
        gs: Sequence[Tensor | None] = [None] * len(params)
        if f[c].requires_grad:
            gs = torch.autograd.grad(f[c], list(params), retain_graph=c < f.shape[0] - 1,
                                     allow_unused=True)
        rows.append(torch.cat([torch.zeros(p.numel(), dtype=dtype, device=f.device)
                               if g is None else dense(g).reshape(-1).to(dtype)
                               for g, p in zip(gs, params, strict=True)]))
    return torch.stack(rows)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    size = max(1, size)
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def block(ga: torch.Tensor, gb: torch.Tensor, full: bool) -> torch.Tensor:
    """``Σ_p G_a[i,c,p] G_b[j,d,p]``: (na, nb), or (na, nb, C, C) when ``full``."""
    if not full:
        return ga.flatten(1) @ gb.flatten(1).T
    (na, C, P), nb = ga.shape, gb.shape[0]
    prod = ga.reshape(na * C, P) @ gb.reshape(nb * C, P).T
    return prod.reshape(na, C, nb, C).permute(0, 2, 1, 3)


def accumulate(K: torch.Tensor, G: torch.Tensor, full: bool) -> None:
    """``K += G Gᵀ`` in place; for the trace kernel only the blocks on and above the diagonal
    are multiplied once N >= 128 (the product is symmetric; measured on a quiet machine: 15-25 %
    saved at N = 128-256, nothing at N = 64)."""
    if full:
        K += block(G, G, True)
        return
    N = G.shape[0]
    G = G.reshape(N, -1)
    nb = 1 if N < 128 else min(N // 64, 8)  # blocks of >= 64 rows stay efficient
    cut = [N * k // nb for k in range(nb + 1)]
    for a in range(nb):
        ga = G[cut[a] : cut[a + 1]]
        K[cut[a] : cut[a + 1], cut[a] : cut[a + 1]].addmm_(ga, ga.T)
        if a + 1 < nb:
            blk = ga @ G[cut[a + 1] :].T
            K[cut[a] : cut[a + 1], cut[a + 1] :] += blk
            K[cut[a + 1] :, cut[a] : cut[a + 1]] += blk.T


def contract(K: Tensor, rows: PerSampleJacobian, sizes: dict[str, int], free: int, act: int,
             full: bool) -> None:
    """K += J_B J_Bᵀ over blocks B of the parameters in ``sizes`` (name -> bytes of one
    sample's rows), chunked over samples (cost in :mod:`cosmo_optim.ntk`'s docstring).

    Block and chunk sizes come from the ``free`` bytes before anything is allocated. Computing
    the rows of m samples holds them twice (per-parameter Jacobians, then their concatenation)
    beside m one-sample graphs (``act`` bytes each); pairs of chunks hold two sets of rows.
    """
    N = K.shape[0]
    blocks: list[list[str]] = [[]]
    limit = max(free // 2, 1)
    for n, size in sizes.items():  # greedy blocks whose N×C×P Jacobian fits half the budget
        if blocks[-1] and N * (sum(sizes[k] for k in blocks[-1]) + size) > limit:
            blocks.append([])
        blocks[-1].append(n)
    for names in blocks:
        row = sum(sizes[k] for k in names)  # one sample's rows
        if N * row <= limit:  # whole Jacobian of this block, built in chunks
            G = torch.cat([rows.rows(names, lo, hi)
                           for lo, hi in chunks(N, limit // (2 * row + act))])
            accumulate(K, G, full)
            continue
        pieces = chunks(N, free // (4 * row + act))
        for a, (alo, ahi) in enumerate(pieces):  # recompute pairs: memory O(m C P)
            Ga = rows.rows(names, alo, ahi)
            for blo, bhi in pieces[a:]:
                Gb = Ga if blo == alo else rows.rows(names, blo, bhi)
                blk = block(Ga, Gb, full)
                K[alo:ahi, blo:bhi] += blk
                if blo != alo:
                    K[blo:bhi, alo:ahi] += blk.transpose(0, 1).transpose(-1, -2) if full else blk.T


def dense(g: Tensor) -> Tensor:
    """A gradient in strided layout (sparse embedding gradients are densified)."""
    return g.to_dense() if g.layout != torch.strided else g


def verify(kernel: Tensor, model: nn.Module, x: ModelInputs, names: Sequence[str],
           select: Callable[[object, ModelInputs], Tensor], samples: int, full: bool,
           precision: torch.dtype, autocast: Callable[[], AbstractContextManager[object]]) -> None:
    """Recompute ``kernel`` on a few samples by brute force and raise if it disagrees.

    A path that shares nothing with the kernel's: the user's own module called as it is
    (no ``functional_call``, no rule, no recorder, its fused fast paths as the user has
    them), gradients on whatever the caller's grad mode, the forward under the caller's
    ``autocast``. The samples are the first, the last (chunk edges) and random others; each
    costs one forward of one sample and ``C`` backward passes; memory O(samples · C · P).
    The reference is contracted in float64; the tolerance is that of the coarser of the
    kernel's forward ``precision`` and the module's own outputs (:data:`TOLERANCE`).

    Raises:
        RuntimeError: with the measured relative error, if it exceeds the tolerance.
    """
    N = len(x)
    gen = torch.Generator().manual_seed(N)
    middle = (torch.randperm(max(N - 2, 0), generator=gen)[: max(samples - 2, 0)] + 1).tolist()
    picks = sorted({0, N - 1, *middle})
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    state = python_state(model)  # each forward from the same counters, caches and states

    dtypes = {precision}

    def one(i: int) -> Tensor:
        restore_python_state(state, fresh=True)
        sub = x[i : i + 1].clone()
        with torch.enable_grad(), autocast():
            out = select(sub.call(model), sub)
        dtypes.add(out.dtype)
        return gradient_rows(out.reshape(-1), params, torch.float64)

    try:
        J = torch.stack([one(i) for i in picks])
    finally:  # a forward that raises leaves the module's counters and caches as they were
        restore_python_state(state)
    dtype = max(dtypes, key=lambda d: torch.finfo(d).eps)
    tol = tolerance(dtype, kernel.device)
    idx = torch.tensor(picks, device=kernel.device)
    reference = torch.einsum("icp,jdp->ijcd" if full else "icp,jcp->ij", J, J)
    computed = kernel[idx][:, idx]
    err = relative_error(computed.to(reference.dtype), reference.to(kernel.device))
    if err > tol:
        raise RuntimeError(
            f"empirical_ntk self-check failed: entries for samples {picks} differ from a "
            f"brute-force autograd Jacobian of the model's own forward by {err:.3g} (relative; "
            f"tolerance {tol:g} for {dtype}). The kernel is not exact for this model. Fix: use "
            "method='jacobian', and please report the model so a rule can be corrected."
        )
