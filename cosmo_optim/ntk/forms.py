"""The table of term forms: how one parameter's kernel term is computed from its rows (T4).

For a layer seen at rows ``s`` with inputs ``x`` and output cotangents ``δ^c`` (:mod:`.rules`),

    Θ_W[i, j] = Σ_c Σ_{s,t} (x_is · x_jt)(δ^c_is · δ^c_jt)     (:class:`Gram`)
              = Σ_c <g^c_i, g^c_j>,  g^c_i = Σ_s δ^c_isᵀ x_is   (:class:`PerSample`)

and a weight tied across token-id calls and dense calls (:func:`.rules.tied`) is each kind's
Gram term plus their cross term (:class:`Tied`). Each form is a small class with its cost model
(:meth:`Form.cost`: multiply-adds, bytes kept for all N samples, bytes the streaming plan
holds), its chunk term (:meth:`Form.term`, from one chunk's cotangents), how chunk terms join
along the samples, and how a term is added to the kernel (:meth:`Form.add`). :data:`FORMS` is
the table the planner (:func:`choose`) reads; a form is never named by a string.

Rows whose cotangent is zero for every sample (positions an output never reads, such as all
but the last token under a last-token selection) are dropped from a Gram product: they add 0.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from cosmo_optim.ntk import rules
from cosmo_optim.ntk.per_sample import accumulate, chunks
from cosmo_optim.ntk.rules import Use

__all__ = ["FORMS", "Choice", "Cost", "Form", "Gram", "PerSample", "Tied", "choose", "gram_into",
           "merge_biases"]

_SYMMETRIC_FROM = 512  # N from which the Gram form multiplies only blocks above the diagonal


class Cost(NamedTuple):
    """A form's cost for N samples and C components: multiply-adds of the kernel term, bytes
    its terms hold for all N samples over chunks (stored plan), bytes it holds in the
    streaming plan (one component's term, or every component's rows where it stacks them)."""

    flops: int
    kept: int
    transient: int


class Form:
    """How one parameter's kernel term is computed (the module docstring's formulas)."""

    label: ClassVar[str]  # the form's name in the plan's description

    def applies(self, uses: list[Use]) -> bool:
        raise NotImplementedError

    def cost(self, uses: list[Use], N: int, C: int, isz: int, full: bool) -> Cost:
        raise NotImplementedError

    def term(self, uses: list[Use], delta: dict[int, Tensor]) -> Any:
        """One chunk's term from the cotangents ``delta`` (c, *y.shape) of the uses' outputs."""
        raise NotImplementedError

    def join(self, parts: list[Any]) -> Any:
        """The terms of consecutive chunks, along the sample axis."""
        raise NotImplementedError

    def add(self, K: Tensor, term: Any, *, bias: bool, free: int, full: bool) -> None:
        """``K += `` the kernel of ``term`` within ``free`` bytes (``bias``: plus the kernel of
        a bias used in the same calls, where the form merges one)."""
        raise NotImplementedError

    def merges_bias(self, uses: list[Use]) -> bool:
        """True if a bias used in exactly these calls can share this term (:func:`merge_biases`)."""
        return False

    def stack(self, parts: list[Any]) -> Any | None:
        """The terms of single components joined along the component axis, for one
        :meth:`add` of all of them (its product over the inputs made once, not per component);
        None for a form whose terms are added component by component."""
        return None


def _dims(uses: list[Use]) -> tuple[int, int, int]:
    """(R summed over the uses, d_in, d_out) of the first use."""
    dims = []
    for u in uses:
        assert u.rule is not None
        dims.append(u.rule.dims(u))
    return sum(d[0] for d in dims), dims[0][1], dims[0][2]


def layer_rows(uses: list[Use], delta: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
    """Rows (X, Δ) of every call of one parameter, concatenated along the row axis."""
    terms = []
    for u in uses:
        assert u.rule is not None
        terms.append(u.rule.rows(u, delta[id(u.out)]))
    if len(terms) == 1:
        return terms[0]
    return torch.cat([x for x, _ in terms], 1), torch.cat([d for _, d in terms], 2)


class PerSample(Form):
    """``Σ_c <g^c_i, g^c_j>`` from per-sample gradients (n, C, P): time O(C N R d_in d_out +
    C N² d_in d_out), memory O(N C d_in d_out). Applies to every recognised parameter."""

    label = "psg"

    def applies(self, uses: list[Use]) -> bool:
        return True

    def cost(self, uses: list[Use], N: int, C: int, isz: int, full: bool) -> Cost:
        R, d_in, d_out = _dims(uses)
        rule = uses[0].rule
        assert rule is not None
        if uses[0].role == "bias" or not rule.gram:  # a vector per sample
            return Cost(C * N * R * d_out + C * (C if full else 1) * N * N * d_out,
                        N * C * d_out * isz, N * d_out * isz)
        width = d_in * d_out
        return Cost(C * N * R * width + C * (C if full else 1) * N * N * width,
                    N * C * width * isz, N * width * isz)

    def term(self, uses: list[Use], delta: dict[int, Tensor]) -> Tensor:
        return rules.per_sample_grads(uses, delta)

    def join(self, parts: list[Tensor]) -> Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def add(self, K: Tensor, term: Tensor, *, bias: bool, free: int, full: bool) -> None:
        accumulate(K, term, full)


class Gram(Form):
    """``Σ_{s,t} (x_is · x_jt)(δ_is · δ_jt)`` from the rows: time O(N² R² (d_in + C d_out)),
    memory O(N R (d_in + C d_out)) kept plus one block of O(b R · N R) for b samples."""

    label = "gram"

    def applies(self, uses: list[Use]) -> bool:
        if uses[0].role != "weight" or rules.tied(uses):
            return False
        return all(u.rule is not None and u.rule.gram_ok(u) for u in uses)

    def cost(self, uses: list[Use], N: int, C: int, isz: int, full: bool) -> Cost:
        R, d_in, d_out = _dims(uses)
        width = 1 if uses[0].rule is not None and uses[0].rule.ids else d_in
        kept = N * R * (width + C * d_out) * isz  # the streaming plan too keeps all C
        return Cost(N * N * R * R * (d_in + C * (C if full else 1) * d_out), kept, kept)

    def term(self, uses: list[Use], delta: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        return layer_rows(uses, delta)

    def join(self, parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        xs, ds = zip(*parts, strict=True)
        return (xs[0] if len(xs) == 1 else torch.cat(xs),
                ds[0] if len(ds) == 1 else torch.cat(ds, dim=1))

    def add(self, K: Tensor, term: tuple[Tensor, Tensor], *, bias: bool, free: int,
            full: bool) -> None:
        X, D = term
        gram_into(K, X, D, not X.is_floating_point(), plus_one=bias, free=free, full=full)

    def merges_bias(self, uses: list[Use]) -> bool:
        return uses[0].rule is not None and not uses[0].rule.ids

    def stack(self, parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return parts[0][0], torch.cat([d for _, d in parts])


TiedRows = tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]


class Tied(Form):
    """A weight ``W`` (V, d) tied across embedding calls (ids, cotangents ``δ``) and linear
    calls (inputs ``h``, cotangents ``δ'`` over V): the Gram terms of each kind plus the cross
    term ``<g^e_ic, g^l_jd> = Σ_{s,t} δ'_jtd[id_is] (δ_isc · h_jt)`` and its transpose, never a
    per-sample (V × d) gradient. Time O(N² (Re² C d + Rl² (d + C V) + C Re Rl d))."""

    label = "tied"

    def applies(self, uses: list[Use]) -> bool:
        return rules.tied(uses)

    def cost(self, uses: list[Use], N: int, C: int, isz: int, full: bool) -> Cost:
        V, d = uses[0].args["weight"].shape
        c2 = C if full else 1
        flops = kept = 0
        for u in uses:
            assert u.rule is not None
            r = u.rule.dims(u)[0]
            flops += N * N * r * r * (C * c2 * (d if u.rule.ids else V) + (0 if u.rule.ids
                                                                           else d))
            kept += N * r * (1 + C * d if u.rule.ids else d + C * V) * isz
        return Cost(flops, kept, kept)

    def term(self, uses: list[Use], delta: dict[int, Tensor]) -> TiedRows:
        emb = [u for u in uses if u.rule is not None and u.rule.ids]
        lin = [u for u in uses if u.rule is not None and not u.rule.ids]
        ids, De = layer_rows(emb, delta) if emb else (None, None)
        H, Dl = layer_rows(lin, delta) if lin else (None, None)
        return ids, De, H, Dl

    def join(self, parts: list[TiedRows]) -> TiedRows:
        def cat(k: int, dim: int) -> Tensor | None:
            ts = [p[k] for p in parts]
            return None if ts[0] is None else torch.cat(ts, dim)  # type: ignore[arg-type]
        return cat(0, 0), cat(1, 1), cat(2, 0), cat(3, 1)

    def stack(self, parts: list[TiedRows]) -> TiedRows:
        def cat(k: int) -> Tensor | None:
            ts = [p[k] for p in parts]
            return None if ts[0] is None else torch.cat(ts)  # type: ignore[arg-type]
        return parts[0][0], cat(1), parts[0][2], cat(3)

    def add(self, K: Tensor, term: TiedRows, *, bias: bool, free: int, full: bool) -> None:
        ids, De, H, Dl = term
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
        if full:  # Σ over the rows s, t inside the product: never an (N Re, N Rl, C, C) array
            M = torch.einsum("cisjt,djtis->ijcd", A.reshape(C, N, Re, N, Rl),
                             B.reshape(C, N, Rl, N, Re))
            K += M + M.permute(1, 0, 3, 2)
            return
        M = torch.einsum("cxy,cyx->xy", A, B).reshape(N, Re, N, Rl).sum((1, 3))
        K += M + M.T


#: The table of forms the planner chooses from, by cost.
FORMS: tuple[Form, ...] = (Gram(), PerSample(), Tied())


class Choice(NamedTuple):
    """The form the planner chose for one parameter, and its cost."""

    form: Form
    cost: Cost


def choose(uses: list[Use], N: int, C: int, isz: int, *, full: bool, budget: int,
           prefer: tuple[type[Form], ...] = ()) -> Choice:
    """The form of one parameter: the first of ``prefer`` that applies (``method=
    "structured"``: the forms from rows, Gram and tied, wherever they exist), else the fewest
    multiply-adds among the forms whose kept terms fit half the budget, else the form that
    keeps the least."""
    options = [Choice(f, f.cost(uses, N, C, isz, full)) for f in FORMS if f.applies(uses)]
    preferred = [c for p in prefer for c in options if isinstance(c.form, p)]
    if preferred:
        return preferred[0]
    fits = [c for c in options if c.cost.kept <= budget // 2]
    if fits:
        return min(fits, key=lambda c: c.cost.flops)
    return min(options, key=lambda c: c.cost.kept)


def merge_biases(forms: dict[str, Choice], uses: dict[str, list[Use]]) -> dict[str, str]:
    """{weight: bias} for weights whose form merges a bias used in exactly the same calls:
    ``Θ_W + Θ_b = Σ_{s,t} (x_is·x_jt + 1)(δ_is·δ_jt)``, one Gram instead of two."""
    outs = {n: [id(u.out) for u in us] for n, us in uses.items()}
    merged: dict[str, str] = {}
    for w, us in uses.items():
        if not forms[w].form.merges_bias(us):
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
