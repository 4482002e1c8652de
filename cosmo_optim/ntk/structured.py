"""The structured executors: kernel terms of recognised layers from their rows (docs/theory.md T4).

Each takes the request's :class:`.forward.Forward` and its :class:`.plan.Plan` and returns
:class:`Terms`: the kernel of the parameters it kept, the outputs its pass computed (for the
coupling proof) and the parameters it demoted to the per-sample Jacobian. The form of each
parameter's term is the plan's choice from :data:`.forms.FORMS`.

The trace kernel is a sum over output components c and over layers, so :func:`streaming` adds
each (component, layer) term as soon as its cotangent exists, except the row forms' (Gram,
tied), whose cotangent rows it stacks over the components for one product at the end (the
product of the inputs' rows made once, not C times). :func:`stored` keeps each layer's
terms over chunks of samples and contracts them at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from cosmo_optim.ntk import guards, rules
from cosmo_optim.ntk.forms import merge_biases
from cosmo_optim.ntk.per_sample import chunks

if TYPE_CHECKING:
    from cosmo_optim.ntk.forward import Forward
    from cosmo_optim.ntk.plan import Plan

__all__ = ["Terms", "stored", "streaming"]


class Terms(NamedTuple):
    """What a structured executor returns."""

    kernel: Tensor  # the kernel of the parameters it kept: (N, N) or (N, N, C, C)
    outputs: Tensor  # (N, C) every sample's outputs as its pass computed them
    demoted: list[str]  # parameters whose rule failed a run-time check: the Jacobian's


def _changed(fwd: Forward, uses: dict[str, list[rules.Use]], n: int) -> list[str]:
    """Parameters whose calls differ from the scout's, or whose rule does not hold on a chunk
    of ``n`` samples."""
    return [m for m, us in uses.items()
            if len(us) != len(fwd.uses[m]) or not rules.qualifies(us, n)]


def streaming(fwd: Forward, plan: Plan) -> Terms:
    """One forward of every sample, one backward per component, each term added at once.

    A parameter demoted after its terms were added (a captured output the graph never reached,
    rows not owned by their sample) makes the pass run again without it, so the kernel holds
    no partial term.
    """
    names = [n for g in plan.groups for n in g]
    dropped: list[str] = []
    free = plan.budget - plan.kernel - plan.per_sample * fwd.N
    assert fwd.r is not None
    while True:
        recorder, f = fwd.recorded(fwd.x)
        uses = {n: recorder.uses[n] for n in names}
        dropped += _changed(fwd, uses, fwd.N)
        uses = {n: us for n, us in uses.items() if n not in dropped}
        merged = merge_biases(plan.forms, uses)
        outs = {id(u.out): u.out for us in uses.values() for u in us if u.out is not None}
        part = torch.zeros((fwd.N, fwd.N), dtype=fwd.dtype, device=fwd.device)
        plain: dict[int, Tensor] = {}  # Σ_c r_c δ^c: the ownership proof's reference
        stacked: dict[str, list[Any]] = {}  # per-component terms of forms that stack them
        for c, rc in enumerate(fwd.r[:, 0].tolist()):
            delta = fwd.cotangents(f, outs, components=[c], retain=True)
            for k, d in delta.items():
                if k in plain:
                    plain[k].add_(d[0], alpha=rc)
                else:
                    plain[k] = d[0] * rc
            for n, us in uses.items():
                missed = {id(u.out): u.out for u in us
                          if u.out is not None and id(u.out) not in delta}
                if n in merged.values() or len(missed) == len(us):
                    continue  # a merged bias; no use of n depends on component c
                form = plan.forms[n].form  # a use component c does not reach adds 0:
                term = form.term(us, delta | {k: torch.zeros_like(y, dtype=fwd.dtype)[None]
                                              for k, y in missed.items()})
                if form.stack([term]) is not None:
                    stacked.setdefault(n, []).append(term)
                else:
                    form.add(part, term, bias=n in merged, free=free, full=False)
        for n, terms in stacked.items():
            form = plan.forms[n].form
            form.add(part, form.stack(terms), bias=n in merged, free=free, full=False)
        foreign = guards.foreign_rows((f @ fwd.r)[:, 0], plain, outs, fwd.tolerance)
        lost = [n for n, us in uses.items()
                if not all(id(u.out) in plain and id(u.out) not in foreign for u in us)]
        if not lost:
            return Terms(part, f.detach(), sorted(dropped))
        dropped += lost  # their partial terms are in `part`: redo the pass without them
        names = [n for n in uses if n not in lost]


def stored(fwd: Forward, plan: Plan, names: list[str]) -> Terms:
    """One pass over chunks of ``plan.chunk`` samples for the parameters ``names``: their terms
    (all C components) kept until the last chunk, then contracted."""
    store: dict[str, list[Any]] = {n: [] for n in names}
    demoted: set[str] = set()
    uses: dict[str, list[rules.Use]] = {}
    outputs = torch.empty((fwd.N, fwd.C), dtype=fwd.dtype, device=fwd.device)
    for lo, hi in chunks(fwd.N, plan.chunk):
        recorder, f = fwd.recorded(fwd.x[lo:hi])
        outputs[lo:hi] = f.detach()
        uses = {n: recorder.uses[n] for n in names}
        demoted.update(_changed(fwd, uses, hi - lo))
        live = [n for n in names if n not in demoted]
        outs = {id(u.out): u.out for n in live for u in uses[n] if u.out is not None}
        delta = fwd.cotangents(f, outs, retain=True)
        foreign = fwd.foreign(f, outs, delta)
        for n in live:
            if all(id(u.out) in delta and id(u.out) not in foreign for u in uses[n]):
                store[n].append(plan.forms[n].form.term(uses[n], delta))
            else:  # an output the graph never reached (a traced copy), or rows not owned
                demoted.add(n)
    live_uses = {n: uses[n] for n in names if n not in demoted}
    merged = merge_biases(plan.forms, live_uses)
    shape = (fwd.N, fwd.N, fwd.C, fwd.C) if plan.full else (fwd.N, fwd.N)
    K = torch.zeros(shape, dtype=fwd.dtype, device=fwd.device)
    for n in live_uses:
        if n in merged.values():
            continue
        form, parts = plan.forms[n].form, store.pop(n)
        form.add(K, form.join(parts), bias=n in merged, free=plan.budget - plan.kernel,
                 full=plan.full)
    return Terms(K, outputs, sorted(demoted))
