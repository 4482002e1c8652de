"""The structured executor: kernel terms of recognised layers from their rows (docs/theory.md T4).

For a layer seen at rows ``s`` with inputs ``x`` and output cotangents ``δ`` (:mod:`.rules`),

    Θ_W[i, j] = Σ_c Σ_{s,t} (x_is · x_jt)(δ^c_is · δ^c_jt)     (Gram form)
              = Σ_c <g^c_i, g^c_j>,  g^c_i = Σ_s δ^c_isᵀ x_is   (per-sample-gradient form).

The trace kernel is a sum over output components c and over layers, so the streaming plan
(:mod:`.plan`) adds each (component, layer) term as soon as its cotangent exists. The stored
plan keeps each layer's terms over chunks of samples and contracts them at the end.
Rows whose cotangent is zero for every sample (positions an output never reads, such as all
but the last token under a last-token selection) are dropped from a Gram product: they add 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from cosmo_optim.ntk import guards, rules
from cosmo_optim.ntk.per_sample import accumulate, chunks

if TYPE_CHECKING:
    from cosmo_optim.ntk.engine import Engine
    from cosmo_optim.ntk.plan import Plan

__all__ = ["gram_into", "stored", "streaming"]

_SYMMETRIC_FROM = 512  # N from which the Gram form multiplies only blocks above the diagonal


def streaming(engine: Engine, K: Tensor, plan: Plan, leaves: dict[str, Tensor],
              counts: dict[str, int]) -> list[str]:
    """One forward of every sample, one backward per component, each term added at once.

    Returns the names demoted to the Jacobian path (a call that changed between the scout and
    this forward, or a captured output the graph never reached); if a demoted parameter had
    already added terms, the pass is redone without it, so the kernel holds no partial term.
    """
    names = [n for g in plan.groups for n in g]
    dropped: list[str] = []
    free = plan.budget - plan.kernel - plan.per_sample * engine.N
    while names:
        recorder, f = engine.forward(engine.x, leaves)
        engine.record(0, f)
        uses = {n: recorder.uses[n] for n in names}
        dropped += [n for n, us in uses.items()
                    if len(us) != counts[n] or not rules.qualifies(us, engine.N)]
        uses = {n: us for n, us in uses.items() if n not in dropped}
        merged = merge_biases(plan.forms, uses)
        outs = {id(u.out): u.out for us in uses.values() for u in us if u.out is not None}
        part = torch.zeros_like(K)
        plain: dict[int, Tensor] = {}  # Σ_c r_c δ^c: the ownership proof's reference
        for c, rc in enumerate(engine.r[:, 0].tolist()):
            delta = engine.cotangents(f, outs, components=[c], retain=True)
            for k, d in delta.items():
                if k in plain:
                    plain[k].add_(d[0], alpha=rc)
                else:
                    plain[k] = d[0] * rc
            for n, us in uses.items():
                seen = [u for u in us if id(u.out) in delta]
                if seen and n not in merged.values():
                    _add(part, plan.forms[n][0], seen, delta, plus_one=n in merged, free=free)
        foreign = guards.foreign_rows((f @ engine.r)[:, 0], plain, outs, engine.tolerance)
        lost = [n for n, us in uses.items()
                if not all(id(u.out) in plain and id(u.out) not in foreign for u in us)]
        if not lost:
            K += part
            break
        dropped += lost  # their partial terms are in `part`: redo the pass without them
        names = [n for n in uses if n not in lost]
    return sorted(dropped)


def _add(K: Tensor, form: str, uses: list[rules.Use], delta: dict[int, Tensor], *,
         plus_one: bool, free: int) -> None:
    """K += one component's term of one parameter (trace kernel)."""
    if form == "tied":
        tied_term(K, tied_rows(uses, delta), free, full=False)
        return
    if form == "psg":
        accumulate(K, per_sample_grads(uses, delta), False)
        return
    X, D = layer_rows(uses, delta)
    gram_into(K, X, D, rules.rule(uses[0]).ids, plus_one=plus_one, free=free,
              full=False)


TiedRows = tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]


def tied_rows(uses: list[rules.Use], delta: dict[int, Tensor]) -> TiedRows:
    """(ids, δ) of the embedding calls and (h, δ') of the linear calls of a tied weight."""
    emb = [u for u in uses if rules.rule(u).ids]
    lin = [u for u in uses if not rules.rule(u).ids]
    ids, De = layer_rows(emb, delta) if emb else (None, None)
    H, Dl = layer_rows(lin, delta) if lin else (None, None)
    return ids, De, H, Dl


def tied_term(K: Tensor, rows: TiedRows, free: int, full: bool) -> None:
    """K += the kernel of a weight ``W`` (V, d) tied across embedding calls (ids, cotangents
    ``δ``) and linear calls (inputs ``h``, cotangents ``δ'`` over V): the Gram terms of each
    kind plus the cross term ``<g^e_ic, g^l_jd> = Σ_{s,t} δ'_jtd[id_is] (δ_isc · h_jt)`` and
    its transpose, never a per-sample (V × d) gradient."""
    ids, De, H, Dl = rows
    if ids is not None and De is not None:
        gram_into(K, ids, De, True, plus_one=False, free=free, full=full)
    if H is None or Dl is None:
        return
    keep = Dl.abs().amax(dim=(0, 1, 3)) > 0  # rows no output reads: no gradient
    H, Dl = H[:, keep], Dl[:, :, keep]
    gram_into(K, H, Dl, False, plus_one=False, free=free, full=full)
    if ids is None or De is None or H.shape[1] == 0:
        return
    C, N, Re, Rl = De.shape[0], ids.shape[0], ids.shape[1], H.shape[1]
    A = De.reshape(C, N * Re, -1) @ H.reshape(N * Rl, -1).T  # δ_isc · h_jt
    B = Dl.reshape(C, N * Rl, -1)[:, :, ids.reshape(-1)]  # δ'_jtd[id_is]
    if full:
        M = torch.einsum("cxy,dyx->xycd", A, B).reshape(N, Re, N, Rl, C, C).sum((1, 3))
        K += M + M.permute(1, 0, 3, 2)
        return
    M = torch.einsum("cxy,cyx->xy", A, B).reshape(N, Re, N, Rl).sum((1, 3))
    K += M + M.T


def layer_rows(uses: list[rules.Use], delta: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
    """Rows (X, Δ) of every call of one parameter, concatenated along the row axis."""
    terms = [rules.rows(u, delta[id(u.out)]) for u in uses]
    if len(terms) == 1:
        return terms[0]
    return torch.cat([x for x, _ in terms], 1), torch.cat([d for _, d in terms], 2)


def per_sample_grads(uses: list[rules.Use], delta: dict[int, Tensor]) -> Tensor:
    """(n, C, P) per-sample gradients of one parameter: a layer called several times adds
    its calls' gradients (cross terms exact)."""
    G = rules.per_sample_grad(uses[0], delta[id(uses[0].out)])
    for u in uses[1:]:
        G = G + rules.per_sample_grad(u, delta[id(u.out)])
    return G


def stored(engine: Engine, K: Tensor, plan: Plan, names: list[str], leaves: dict[str, Tensor],
           counts: dict[str, int]) -> list[str]:
    """One pass over chunks of ``plan.chunk`` samples for the parameters ``names``: their terms
    (all C components) kept until the last chunk, then contracted. Returns the demoted names."""
    store: dict[str, list[Any]] = {n: [] for n in names}
    demoted: set[str] = set()
    uses: dict[str, list[rules.Use]] = {}
    for lo, hi in chunks(engine.N, plan.chunk):
        recorder, f = engine.forward(engine.x[lo:hi], leaves)
        engine.record(lo, f)
        for n in names:
            us = recorder.uses[n]
            if len(us) != counts[n] or not rules.qualifies(us, hi - lo):
                demoted.add(n)
        live = [n for n in names if n not in demoted]
        outs = {id(u.out): u.out for n in live for u in recorder.uses[n] if u.out is not None}
        delta = engine.cotangents(f, outs, retain=True)
        foreign = engine.foreign(f, outs, delta)
        for n in live:
            if all(id(u.out) in delta and id(u.out) not in foreign for u in recorder.uses[n]):
                store[n].append(engine.chunk_term(plan.forms[n][0], recorder.uses[n], delta))
            else:  # an output the graph never reached (a traced copy), or rows not owned
                demoted.add(n)
        uses = recorder.uses
    live_uses = {n: uses[n] for n in names if n not in demoted}
    merged = merge_biases(plan.forms, live_uses)
    free = plan.budget - plan.kernel
    for n in live_uses:
        if n in merged.values():
            continue
        parts, store[n] = store[n], []
        if plan.forms[n][0] == "psg":
            accumulate(K, parts[0] if len(parts) == 1 else torch.cat(parts), engine.full)
            continue
        if plan.forms[n][0] == "tied":
            tied_term(K, _joined(parts), free, engine.full)
            continue
        xs, ds = zip(*parts, strict=True)
        X = xs[0] if len(xs) == 1 else torch.cat(xs)
        D = ds[0] if len(ds) == 1 else torch.cat(ds, dim=1)
        gram_into(K, X, D, rules.rule(uses[n][0]).ids, plus_one=n in merged, free=free,
                  full=engine.full)
    return sorted(demoted)


def _joined(parts: list[TiedRows]) -> TiedRows:
    """The tied rows of every chunk, along the sample axis (dim 0 of ids and h, 1 of δ)."""
    def cat(k: int, dim: int) -> Tensor | None:
        ts = [p[k] for p in parts]
        return None if ts[0] is None else torch.cat(ts, dim)  # type: ignore[arg-type]
    return cat(0, 0), cat(1, 1), cat(2, 0), cat(3, 1)


def merge_biases(forms: dict[str, tuple[str, int, int]],
                 uses: dict[str, list[rules.Use]]) -> dict[str, str]:
    """{weight: bias} for Gram-form weights whose bias is used in exactly the same calls:
    ``Θ_W + Θ_b = Σ_{s,t} (x_is·x_jt + 1)(δ_is·δ_jt)``, one Gram instead of two."""
    outs = {n: [id(u.out) for u in us] for n, us in uses.items()}
    merged: dict[str, str] = {}
    for w, us in uses.items():
        if forms[w][0] != "gram" or rules.rule(us[0]).ids:
            continue
        for b, bus in uses.items():
            if bus[0].role == "bias" and outs[b] == outs[w] and b not in merged.values():
                merged[w] = b
                break
    return merged


def gram_into(K: Tensor, X: Tensor, D: Tensor, emb: bool, *, plus_one: bool,
              free: int, full: bool) -> None:
    """K += Σ_{s,t} (x_is·x_jt [+ 1])(δ_is·δ_jt), in blocks of b samples that fit ``free``
    bytes (``plus_one`` adds the kernel of the layer's bias). ``X`` is (N, R, d_in) or token
    ids (N, R) when ``emb``; ``D`` is (C, N, R, d_out)."""
    keep = D.abs().amax(dim=(0, 1, 3)) > 0  # rows no component reads in any sample add 0
    if not bool(keep.all()):
        X, D = X[:, keep], D[:, :, keep]
    C, N, R, d_out = D.shape
    if R == 0:
        return
    Dr = D.permute(1, 2, 0, 3).reshape(N * R, C, d_out)
    Xr = X.reshape(N * R) if emb else X.reshape(N * R, -1)
    per_sample = R * N * R * (2 + (C * C if full else 1)) * D.element_size()
    size = max(free, 0) // 2 // max(per_sample, 1)
    sym = not full and N >= _SYMMETRIC_FROM  # blocks on and above the diagonal only
    if sym:
        size = min(size, -(-N // min(max(N // 256, 2), 8)))
    for lo, hi in chunks(N, size):
        xa, da = Xr[lo * R : hi * R], Dr[lo * R : hi * R]
        if full:
            XX = (xa[:, None] == Xr[None, :]).to(D.dtype) if emb else xa @ Xr.T
            XX = XX + 1 if plus_one else XX
            DD = torch.einsum("acd,bed->abce", da, Dr)
            K[lo:hi] += (XX[..., None, None] * DD).reshape(hi - lo, R, N, R, C, C).sum((1, 3))
            continue
        c0 = lo if sym else 0
        xb, db = Xr[c0 * R :], Dr[c0 * R :]
        XX = (xa[:, None] == xb[None, :]).to(D.dtype) if emb else xa @ xb.T
        XX = XX + 1 if plus_one else XX
        DD = da.reshape(-1, C * d_out) @ db.reshape(-1, C * d_out).T
        blk = (XX * DD).reshape(hi - lo, R, N - c0, R).sum((1, 3))
        K[lo:hi, c0:] += blk
        if sym and hi < N:
            K[hi:, lo:hi] += blk[:, hi - lo :].T
