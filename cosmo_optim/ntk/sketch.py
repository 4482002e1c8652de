"""Per-sample NTK features: exact per-sample gradients, or unbiased sketches of them (T4).

Private helper of :mod:`cosmo_optim.ntk` (``method="sketch"``) and
:mod:`cosmo_optim.ntk.distributed`. A feature map ``φ_i`` (shape ``(C, F)`` per sample) with
``E<φ_i, φ_j> = Θ_ij`` turns the kernel into one matrix product ``Θ ≈ Φ Φᵀ``.

Sketch of a weight ``W`` (viewed as ``d0 × d1``): ``S_i = Pᵀ G_i Q`` with independent
``P (d0 × k)``, ``Q (d1 × k)`` such that ``E[P Pᵀ] = I``, ``E[Q Qᵀ] = I``, hence
``E<S_i, S_j> = <G_i, G_j>`` (docs/theory.md T4: ``Θ_ij = Σ_W <G_i, G_j>``). For a layer seen at
rows ``r`` (positions, repeated calls, a tied embedding and output projection)
``G_i = Σ_r u_ir w_irᵀ``, hence ``S_i = Σ_r (Pᵀu_ir)(Qᵀw_ir)ᵀ``: the per-sample gradient is
never formed (time O(N R k (d0 + d1 + d_kept)) per weight, memory O(N C k·d_kept), d_kept the
side kept exact, or k). A side of ≤ k entries is never projected.

Adapted maps (weights with a rows rule): ``PILOT`` samples spread over the batch (the same on
every rank) are run once more (one forward, C backward passes to the layer outputs); per side,
a randomized range finder gives ``U`` (d × r, r = k // KEPT), the top directions of their
gradients' second moment ``Σ_i G_i G_iᵀ``, and the map is ``[U | √((d−r)/(k−r)) B]`` with B
k − r Haar-random orthonormal columns of U's complement: ``E[P Pᵀ] = UUᵀ + (I − UUᵀ) = I``
whatever U is, as U never depends on the draw of B. The side kept exact (at most
``EXACT_SIDE_PILOTED·k`` entries) is the one whose gradients U, fitted on half the pilot
samples, captures worst on the other half. Other weights: ``√(d/k)`` times k Haar-random
orthonormal columns, and the smaller side of at most ``EXACT_SIDE·k`` entries (the cotangent
side first) kept exact. Parameters of other shapes (biases, LayerNorm) keep their exact
per-sample gradient when it has ≤ k² entries, else a CountSketch (random sign, random bucket
among k²). Parameters no structured rule covers get exact per-sample gradients from the
jacobian path, then the same projection, so the estimator stays unbiased for every parameter.

Error model (docs/performance.md, "Sketched kernel"): for a unit direction ``v`` in sample
space, ``g = Σ_i v_i G_i`` (units of the gradient) and ``vᵀΘ̂v = ‖Pᵀ g Q‖²``. With one side
projected by an adapted map, only ``g_⊥ = (I − UUᵀ) g`` is random: the relative variance of
``vᵀΘ̂v`` is ``≈ 2/(k − r) · ‖g_⊥ g_⊥ᵀ‖_F² / ‖g‖_F⁴`` per weight (dimensionless; for a fully
random side ``≈ 2/k · 1/r_eff``, r_eff the effective rank of ``g gᵀ``, largest for nearly
rank-one g); independent weights average it down in proportion to their share of ``vᵀΘv``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cosmo_optim._common import MemoryBudgetError
from cosmo_optim.ntk import per_sample as exact
from cosmo_optim.ntk import rules, structured

if TYPE_CHECKING:
    from cosmo_optim.ntk.engine import Engine

__all__ = [
    "EXACT_SIDE", "EXACT_SIDE_PILOTED", "KEPT", "PILOT", "FeatureMap", "Pilot", "Projection",
    "factors", "gram", "out_side", "rows_form", "sketch_kernel", "sketch_rows",
]

EXACT_SIDE = 4  # a weight side of at most EXACT_SIDE·k entries is not projected (if the smaller)
EXACT_SIDE_PILOTED = 12  # the same, when the pilot chooses the side (at k = 128: 1536, 4 × 384)
KEPT = 4  # a projected side keeps k // KEPT columns along the pilot gradients' top directions
PILOT = 8  # samples (spread over the batch, the same on every rank) that choose those directions


def gram(fa: torch.Tensor, fb: torch.Tensor, full: bool) -> torch.Tensor:
    """``Σ_f φ_a[i,c,f] φ_b[j,d,f]``: (na, nb), or (na, nb, C, C) when ``full``."""
    if not full:
        return fa.flatten(1) @ fb.flatten(1).T
    (na, C, Fd), nb = fa.shape, fb.shape[0]
    prod = fa.reshape(na * C, Fd) @ fb.reshape(nb * C, Fd).T
    return prod.reshape(na, C, nb, C).permute(0, 2, 1, 3)


def _orthogonal(d: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``√(d/k) U`` with ``U`` (d × min(d, k)) Haar-random orthonormal columns: ``E[P Pᵀ] = I``,
    and a lower variance than a Gaussian matrix of the same size (none at k = d)."""
    k = min(k, d)
    q, r = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)) * math.sqrt(d / k)).to(torch.float32)


def _adapted(U: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``[U | √((d−r)/(k−r)) B]`` (d × k): the r orthonormal columns of ``U`` kept as they
    are, and B k − r Haar-random orthonormal columns of their complement, so that
    ``E[M Mᵀ] = U Uᵀ + (I − U Uᵀ) = I`` for any U chosen independently of the draw."""
    (d, r), U = U.shape, U.cpu()
    om = torch.randn(d, k - r, generator=gen, dtype=torch.float64)
    for _ in range(2):  # project out U twice: orthogonal to working precision
        om -= U @ (U.T @ om)
    q, rr = torch.linalg.qr(om)
    return torch.cat([U, q * torch.sign(torch.diagonal(rr)) * math.sqrt((d - r) / (k - r))], 1)


def _second_moment(A: torch.Tensor,
                   B: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``Y ↦ M Y`` with ``M = Σ_i G_i G_iᵀ = Σ_i A_iᵀ (B_i B_iᵀ) A_i`` for ``G_i = A_iᵀ B_i``
    (A (…, R, d), B (…, R, d'), i over the leading axes): the gradients' second moment on A's
    side, never formed (units: gradient²)."""
    A, B = A.flatten(0, -3), B.flatten(0, -3)
    K = B @ B.transpose(1, 2)
    return lambda Y: A.flatten(0, 1).T @ (K @ (A @ Y.to(A))).flatten(0, 1)


def _directions(A: torch.Tensor, B: torch.Tensor, r: int, gen: torch.Generator) -> torch.Tensor:
    """(d × r, orthonormal, float64) the top eigenvectors of ``M`` (:func:`_second_moment`),
    by a randomized range finder with one power iteration on r + 8 vectors (any orthonormal
    U when M = 0): time O(n R (R d' + 3 d (r + 8)))."""
    M = _second_moment(A, B)
    Y = M(torch.randn(A.shape[-1], r + 8, generator=gen, dtype=torch.float64))
    q = torch.linalg.qr(M(Y / Y.norm().clamp_min(torch.finfo(Y.dtype).tiny)).double()).Q
    S = q.T @ M(q).double()
    return q @ torch.linalg.eigh((S + S.T) / 2).eigenvectors[:, -r:]


def _missed(A: torch.Tensor, B: torch.Tensor, U: torch.Tensor) -> float:
    """``1 − tr(Uᵀ M U) / tr M``: the share of the gradients ``A_iᵀ B_i`` outside span U."""
    A, B = A.flatten(0, -3), B.flatten(0, -3)
    total = float((B @ B.transpose(1, 2) * (A @ A.transpose(1, 2))).sum())
    inside = float((U * _second_moment(A, B)(U).double()).sum())
    return 1 - inside / total if total > 0 else 0.0


def _exact_side(d0: int, d1: int, k: int, out_side: int | None,
                missed: dict[int, float]) -> int | None:
    """The side (0, 1) of a d0 × d1 weight left unprojected, or None (both projected).

    With the pilot's held-out shares ``missed`` of both sides, the side of at most
    ``EXACT_SIDE_PILOTED·k`` entries whose gradients the pilot's top directions capture worst
    (where an adapted map's random part would carry the most: a transformer's activations,
    whose directions differ from sample to sample, while its cotangents share a few). Else a
    side of at most ``EXACT_SIDE·k`` entries, the cotangent side first: the cotangents of one
    output are often nearly rank one across rows and samples (the residual stream of a
    transformer), where a random projection's relative variance is largest (≈ 2/k).
    """
    if len(missed) == 2 and min(d0, d1) <= EXACT_SIDE_PILOTED * k:
        small = [side for side, d in enumerate((d0, d1)) if d <= EXACT_SIDE_PILOTED * k]
        return max(small, key=lambda side: missed[side])
    small = [side for side, d in enumerate((d0, d1)) if d <= EXACT_SIDE * k]
    if out_side in small:
        return out_side
    return min(small, key=lambda side: (d0, d1)[side]) if small else None


def out_side(uses: list[rules.Use]) -> int | None:
    """The weight side that holds the layer's cotangents (0 or 1), None if unknown or mixed."""
    sides = {1 if rules.rule(u).ids or u.args.get("transposed") else 0 for u in uses
             if u.kind is not None and u.role == "weight" and rules.rule(u).gram}
    return sides.pop() if len(sides) == 1 else None


class Projection:
    """The random map of one parameter (or the identity when ``k`` is None: exact features)."""

    def __init__(self, name: str, shape: torch.Size, k: int | None, gen: torch.Generator,
                 like: torch.Tensor, out_side: int | None = None,
                 pilot: Pilot | None = None) -> None:
        self.kind, self.dtype = "dense", like.dtype
        self.P: torch.Tensor | None = None
        self.Q: torch.Tensor | None = None
        numel = math.prod(shape)
        if k is None:
            return
        dev = like.device
        if len(shape) >= 2:  # a weight seen as d0 × d1: Kronecker sketch Pᵀ G Q
            d0, d1 = shape[0], numel // shape[0]
            self.kind, self.d0, self.d1 = "kron", d0, d1
            P, Q = _maps(name, (d0, d1), k, gen, out_side, pilot)
            self.P = None if P is None else P.to(device=dev, dtype=like.dtype)
            self.Q = None if Q is None else Q.to(device=dev, dtype=like.dtype)
        elif numel > k * k:  # CountSketch: bucket b(p), sign s(p)
            self.kind, self.k2 = "count", k * k
            self.bucket = torch.randint(k * k, (numel,), generator=gen).to(dev)
            sign = torch.randint(2, (numel,), generator=gen) * 2 - 1
            self.sign = sign.to(device=dev, dtype=like.dtype)

    def dense(self, G: torch.Tensor) -> torch.Tensor:
        """Features of exact per-sample gradients ``G`` (n, C, P) -> (n, C, F)."""
        n, C = G.shape[:2]
        if self.kind == "count":
            out = G.new_zeros(n, C, self.k2)
            return out.index_add_(2, self.bucket, G * self.sign)
        if self.kind == "dense":
            return G
        G = G.reshape(n, C, self.d0, self.d1)
        if self.P is not None:
            G = torch.einsum("ncab,ak->nckb", G, self.P)
        if self.Q is not None:
            G = G @ self.Q
        return G.reshape(n, C, -1)

    def side(self, t: torch.Tensor, which: int) -> torch.Tensor:
        """Project one factor: dense (c, n, R, d) or token ids (n, R) -> (c, n, R, k)."""
        M = self.P if which == 0 else self.Q
        if t.dtype in (torch.int64, torch.int32):
            d = self.d0 if which == 0 else self.d1
            return (M[t] if M is not None else F.one_hot(t, d).to(self.dtype)).unsqueeze(0)
        return t if M is None else t @ M


def factors(use: rules.Use, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, w)`` with the use's per-sample gradient ``Σ_r u_r w_rᵀ`` in the parameter's own
    (d0, d1) layout; each factor (c, n, R, d) with c in {1, C}, or token ids (n, R)."""
    x, d = rules.rows(use, delta)
    if rules.rule(use).ids:  # weight (V, d): one-hot rows x cotangents
        return x, d
    if use.args.get("transposed"):  # weight stored (in, out), e.g. transformers' Conv1D
        return x.unsqueeze(0), d
    return d, x.unsqueeze(0)  # nn.Linear weight (out, in)


def rows_form(uses: list[rules.Use], n: int, k: int | None) -> bool:
    """True if every use is a dense-rows weight use (linear or embedding, tying allowed)."""
    return k is not None and bool(uses) and all(
        u.kind is not None and rules.rule(u).plain_rows and u.role == "weight"
        and rules.qualifies([u], n)
        and rules.gram_ok([u]) for u in uses)


def sketch_rows(proj: Projection, uses: list[rules.Use], delta: dict[int, torch.Tensor],
                C: int) -> torch.Tensor:
    """``Σ_uses Σ_r (Pᵀu_r)(Qᵀw_r)ᵀ`` per sample and output component: (n, C, k0·k1)."""
    S = None
    for u in uses:
        a, b = factors(u, delta[id(u.out)])
        a, b = proj.side(a, 0), proj.side(b, 1)
        a, b = a.expand(C, *a.shape[1:]), b.expand(C, *b.shape[1:])
        term = torch.einsum("cnrk,cnrl->nckl", a, b)
        S = term if S is None else S + term
    assert S is not None
    return S.reshape(S.shape[0], C, -1)


class Pilot:
    """Per-sample gradient factors of ``PILOT`` samples spread over the batch, the same samples
    on every rank (so a distributed run draws the same adapted maps): one forward and C
    backward passes to the layer outputs of m = min(N, PILOT) samples, run on first use."""

    def __init__(self, engine: Engine, leaves: dict[str, torch.Tensor], names: set[str],
                 k: int) -> None:
        self.e, self.leaves, self.names, self.k = engine, leaves, names, k
        self.uses: dict[str, list[rules.Use]] | None = None

    def _run(self) -> None:
        e, m = self.e, min(self.e.N, PILOT)
        idx = torch.linspace(0, e.N - 1, m).round().long()
        recorder, f = e.forward(e.x[idx], self.leaves)
        uses = {n: recorder.uses[n] for n in self.names if rows_form(recorder.uses[n], m, self.k)}
        outs = {id(u.out): u.out for us in uses.values() for u in us if u.out is not None}
        self.delta = e.cotangents(f, outs)
        self.uses = {n: us for n, us in uses.items() if all(id(u.out) in self.delta for u in us)}

    def factors(self, name: str, d0: int, d1: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(A, B)``, (m, C, R', d0) and (m, C, R', d1), with the pilot's per-sample gradients
        ``G_ic = A_icᵀ B_ic`` (rows of all the weight's uses; token ids one-hot), or None."""
        if self.uses is None:
            self._run()
        assert self.uses is not None
        if name not in self.uses:
            return None
        C, pairs = self.e.C, [factors(u, self.delta[id(u.out)]) for u in self.uses[name]]

        def dense(t: torch.Tensor, d: int) -> torch.Tensor:
            if t.dtype in (torch.int64, torch.int32):
                t = F.one_hot(t, d).to(self.e.dtype).unsqueeze(0)
            return t.detach().expand(C, *t.shape[1:]).transpose(0, 1)

        return (torch.cat([dense(a, d0) for a, _ in pairs], 2),
                torch.cat([dense(b, d1) for _, b in pairs], 2))


def _maps(name: str, dims: tuple[int, int], k: int, gen: torch.Generator,
          out_side: int | None, pilot: Pilot | None) -> list[torch.Tensor | None]:
    """``[P, Q]`` of a d0 × d1 weight (None: side not projected). A side longer than k with
    pilot factors keeps k // KEPT columns along the pilot's top directions (:func:`_adapted`),
    else all k are random (:func:`_orthogonal`). Which side stays exact is chosen on held-out
    pilot samples: directions fitted on the even ones, the share they miss on the odd ones."""
    r = k // KEPT
    fac = pilot.factors(name, *dims) if pilot is not None and r and max(dims) > k else None
    missed = {}
    if fac is not None and fac[0].shape[0] > 1 and min(dims) > k:
        for side in (0, 1):
            A, B = fac[side], fac[1 - side]
            missed[side] = _missed(A[1::2], B[1::2], _directions(A[::2], B[::2], r, gen))
    keep = _exact_side(*dims, k, out_side, missed)
    return [None if d <= k or side == keep else _orthogonal(d, k, gen) if fac is None else
            _adapted(_directions(fac[side], fac[1 - side], r, gen), k, gen)
            for side, d in enumerate(dims)]


class FeatureMap:
    """Features of the pilot samples ``[lo, hi)`` for every selected parameter of ``engine``.

    ``engine`` is the :class:`cosmo_optim.ntk.engine.Engine` of the request (its forward, leaves,
    cotangents and per-sample Jacobian are reused, so outputs, dtype, parameter selection and
    the run-time checks of the rules match the exact path: a parameter whose rule fails them
    in any chunk gets exact per-sample gradients for that chunk, projected by the same map).
    """

    def __init__(self, engine: Engine, k: int | None, seed: int) -> None:
        self.e, self.k = engine, k
        leaves = engine.leaves(engine.names)
        recorder, f1 = engine.scout(leaves)  # the exact engine's scout and guards
        engine.C = f1.shape[1]
        structured = engine.rules_for(recorder, f1, leaves)
        gen = torch.Generator().manual_seed(seed)
        like = torch.empty(0, dtype=engine.dtype, device=engine.device)
        self.rows = {n for n, us in structured.items() if rows_form(us, 1, k)}
        pilot = Pilot(engine, leaves, self.rows, k) if k is not None else None
        self.proj = {n: Projection(n, engine.base[n].shape, k, gen, like,
                                   out_side(recorder.uses[n]), pilot) for n in engine.names}
        engine.free = engine.budget
        self.leaves, self.counts = leaves, {n: len(us) for n, us in recorder.uses.items()}
        self.psg = set(structured) - self.rows
        self.act = (2 + 2 * engine.C) * max(recorder.out_bytes, 1)  # as the exact engine
        vmap_ok = not recorder.functions & exact.VMAP_UNSAFE
        self.jacobian = exact.PerSampleJacobian(engine.call, engine.base, engine.x, engine.C,
                                                vmap_ok, engine.dtype, engine.tolerance)

    def width(self, name: str) -> int:
        """Features per output component of one parameter."""
        p = self.proj[name]
        if p.kind == "kron":
            return (p.d0 if p.P is None else p.P.shape[1]) * (
                p.d1 if p.Q is None else p.Q.shape[1])
        return p.k2 if p.kind == "count" else self.e.base[name].numel()

    def chunk(self, lo: int, hi: int) -> torch.Tensor:
        """(hi - lo, C, F) features of samples ``[lo, hi)``, parameters in ``engine.names``."""
        e, n = self.e, hi - lo
        recorder, f = e.forward(e.x[lo:hi], self.leaves)
        e.record(lo, f)
        ok = {m for m in self.rows | self.psg if len(recorder.uses[m]) == self.counts[m]}
        ok = {m for m in ok if (rows_form(recorder.uses[m], n, self.k) if m in self.rows
                                else rules.qualifies(recorder.uses[m], n))}
        outs = {id(u.out): u.out for m in ok for u in recorder.uses[m] if u.out is not None}
        delta = e.cotangents(f, outs, retain=True)  # (C, *y.shape) per output reaching f
        foreign = e.foreign(f, outs, delta)
        ok = {m for m in ok if all(id(u.out) in delta and id(u.out) not in foreign
                                   for u in recorder.uses[m])}
        out = torch.empty((n, e.C, sum(self.width(m) for m in e.names)), dtype=e.dtype,
                          device=e.device)
        at = 0
        for m in e.names:
            if m not in ok:  # exact per-sample gradients (jacobian path), then projected
                phi = self.proj[m].dense(self.jacobian.rows([m], lo, hi))
            elif m in self.rows:
                phi = sketch_rows(self.proj[m], recorder.uses[m], delta, e.C)
            else:
                phi = self.proj[m].dense(structured.per_sample_grads(recorder.uses[m], delta))
            out[:, :, at : at + phi.shape[2]] = phi.detach()
            at += phi.shape[2]
        return out

    def all(self, lo: int, hi: int) -> torch.Tensor:
        """Features of samples ``[lo, hi)`` in chunks that fit the engine's memory budget."""
        e = self.e
        feat_bytes = (hi - lo) * e.C * sum(self.width(m) for m in e.names) * e.isz
        kernel_bytes = e.N * e.N * (e.C * e.C if e.full else 1) * e.isz
        free = e.budget - kernel_bytes - feat_bytes
        if free < self.act:
            raise MemoryBudgetError(
                f"Invalid memory_budget: {e.budget!r} bytes; the features need at least "
                f"{kernel_bytes + feat_bytes + self.act} (kernel {kernel_bytes}, features "
                f"{feat_bytes}). Fix: raise memory_budget, lower sketch_dim or use fewer samples."
            )
        e.free = free
        m = max(2, free // 2 // self.act)
        parts = [self.chunk(a, min(a + m, hi)) for a in range(lo, hi, m)]
        e.prove_independent(self.leaves, m, lo, hi)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def sketch_kernel(engine: Engine, sketch_dim: int, seed: int) -> torch.Tensor:
    """``Θ̂ = Φ Φᵀ`` from sketched features of the probe batch (see module docstring)."""
    fm = FeatureMap(engine, sketch_dim, seed)
    Phi = fm.all(0, engine.N)
    return gram(Phi, Phi, engine.full)
