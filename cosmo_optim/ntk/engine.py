"""The exact kernel of one request: plan, structured executors, per-sample Jacobian, proof.

:func:`exact_kernel` takes the scout's :class:`.forward.Forward`: it chooses each structured
parameter's form from the table of forms (:func:`.forms.choose`), plans within the budget
(:mod:`.plan`), runs the structured executors (:mod:`.structured`), which return their terms,
proves the samples independent on the outputs their passes computed (:mod:`.coupling`), and
adds the per-sample Jacobian of every other parameter (:func:`jacobian`). The result is exact:
a parameter whose rule fails a run-time check in any chunk is computed again on the exact path.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import Tensor

from cosmo_optim._common import MemoryBudgetError
from cosmo_optim.ntk import coupling, forms, structured
from cosmo_optim.ntk import per_sample as exact
from cosmo_optim.ntk.forward import Forward
from cosmo_optim.ntk.plan import Plan, structured_plan

__all__ = ["Exact", "exact_kernel", "jacobian"]
logger = logging.getLogger("cosmo_optim.ntk")


class Exact(NamedTuple):
    """The exact kernel, the plan it followed, and the parameters the Jacobian computed."""

    kernel: Tensor
    plan: Plan
    jacobian: list[str]

    def describe(self) -> str:
        """The plan in words, and which parameters took the per-sample Jacobian (and why)."""
        text = self.plan.describe()
        planned = [n for n in self.jacobian if n not in self.plan.forms]
        late = [n for n in self.jacobian if n in self.plan.forms]
        if planned:
            text += "\nper-sample Jacobian: " + ", ".join(planned)
        if late:
            text += "\nmoved to the per-sample Jacobian at run time: " + ", ".join(late)
        return text


def exact_kernel(fwd: Forward, budget: int, *, full: bool,
                 prefer: tuple[type[forms.Form], ...] = ()) -> Exact:
    """``Θ = J Jᵀ`` of the selected parameters: structured terms where a rule holds,
    per-sample Jacobians else (``prefer``: a form taken wherever it applies)."""
    N, C, isz = fwd.N, fwd.C, fwd.isz
    kernel_bytes = N * N * (C * C if full else 1) * isz
    choices = {n: forms.choose(us, N, C, isz, full=full, budget=budget, prefer=prefer)
               for n, us in fwd.structured.items()}
    plan = structured_plan(budget, N, kernel_bytes, fwd.out_bytes, choices, full)
    K = torch.zeros((N, N, C, C) if full else (N, N), dtype=fwd.dtype, device=fwd.device)
    outputs: Tensor | None = None
    demoted: list[str] = []
    for group in ([] if plan.streaming else plan.groups):
        terms = structured.stored(fwd, plan, group)
        K += terms.kernel
        outputs, demoted = terms.outputs if outputs is None else outputs, demoted + terms.demoted
    if plan.streaming:
        terms = structured.streaming(fwd, plan)
        K += terms.kernel
        outputs, demoted = terms.outputs, terms.demoted
    coupling.prove_independent(fwd, outputs, plan.chunk)
    rest = set(demoted) | {n for n in fwd.names if n not in choices}
    names = [n for n in fwd.names if n in rest]
    if names:
        K += jacobian(fwd, names, budget - 2 * kernel_bytes, full)
    result = Exact(K, plan, names)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("empirical_ntk plan:\n%s", result.describe())
    return result


def jacobian(fwd: Forward, names: list[str], free: int, full: bool) -> Tensor:
    """``J Jᵀ`` of ``names`` by per-sample Jacobians, chunked within ``free`` bytes."""
    N, C, isz = fwd.N, fwd.C, fwd.isz
    act = (2 + 2 * C) * fwd.out_bytes  # one sample's graph, C cotangents
    sizes = {n: C * fwd.base[n].numel() * isz for n in names}
    kernel = N * N * (C * C if full else 1) * isz  # the result's and this term's: 2 kernels
    need = act + 4 * max(sizes.values())
    if need > free:
        raise MemoryBudgetError(
            f"Invalid memory_budget: {free + 2 * kernel!r} bytes; this request needs at "
            f"least {need + 2 * kernel}: one sample's Jacobian rows of "
            f"{max(sizes, key=sizes.__getitem__)!r} (no structured rule) beside the kernel. "
            f"Fix: memory_budget={need + 2 * kernel} or more, or a params subset without it."
        )
    rows = exact.PerSampleJacobian(fwd.call, dict(fwd.base), fwd.x, C, fwd.vmap_ok, fwd.dtype,
                                   fwd.tolerance)
    K = torch.zeros((N, N, C, C) if full else (N, N), dtype=fwd.dtype, device=fwd.device)
    exact.contract(K, rows, sizes, free, act, full)
    return K
