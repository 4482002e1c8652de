"""One NTK request: the forward it differentiates, the scout, the plan and its execution.

:class:`Engine` holds what every executor shares: the model called with substitutable
parameters (``functional_call`` on detached, cast views: the user's tensors are never touched),
the selection of output components, the scout of sample 0 that finds which calls touch each
parameter, and the run-time proofs (:mod:`.guards`) that decide which parameters keep a
structured rule. :meth:`Engine.run` plans within the budget (:mod:`.plan`) and dispatches to the
structured executor (:mod:`.structured`) and the per-sample Jacobian (:mod:`.per_sample`); the
sketch and the distributed executor drive the same scout and forward.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from cosmo_optim._common import (
    MemoryBudgetError,
    carried_state,
    python_state,
    restore_python_state,
)
from cosmo_optim.ntk import coupling, guards, rules, structured
from cosmo_optim.ntk import per_sample as exact
from cosmo_optim.ntk.admission import coupling_causes
from cosmo_optim.ntk.inputs import ModelInputs
from cosmo_optim.ntk.modes import Autocast
from cosmo_optim.ntk.outputs import Output, selected_outputs, takes_index
from cosmo_optim.ntk.plan import Plan, form, structured_plan
from cosmo_optim.ntk.recorder import UseRecorder

__all__ = ["Engine"]
_DTYPE_CLASH = re.compile(r"dtype|scalar type|input type \(\w+\) and \w+ type", re.IGNORECASE)
logger = logging.getLogger("cosmo_optim.ntk")


class Engine:
    """One kernel request: scout, plan, structured pass, jacobian pass."""

    def __init__(
        self, model: nn.Module, selected: dict[str, nn.Parameter], inputs: ModelInputs,
        output: Output, method: str, dtype: torch.dtype | None, budget: int,
        values: dict[str, torch.Tensor] | None = None, autocast: Autocast | None = None,
    ) -> None:
        self.model, self.output, self.method, self.budget = model, output, method, budget
        self.python_state = python_state(model)  # counters and caches reset before each forward
        self.cast = dtype
        cast = (lambda t: t.to(dtype) if t.is_floating_point() else t) if dtype else (lambda t: t)
        self.x = inputs.to(dtype=dtype) if dtype else inputs
        self.N = len(inputs)
        self.with_index = takes_index(output)
        self.autocast = autocast or Autocast(inputs.device)
        # Detached (cast) views: the user's parameters and their .grad are never touched; the
        # scout replaces those the forward writes into with copies. ``values``: the full
        # values of sharded parameters (:mod:`.sharded`).
        values = values or {}
        self.base = {n: cast(values.get(n, t).detach()) for n, t in model.named_parameters()}
        self.base |= {n: cast(t.detach()) for n, t in model.named_buffers()}
        self.names = list(selected)
        self.originals = {id(p): n for n, p in selected.items()}
        # The forward's precision sets the tolerance of every proof (lowered by the scout when
        # the forward computes in a lower one: bfloat16 weights, autocast); the kernel is
        # accumulated in float32 at least.
        self.precision = self.base[self.names[0]].dtype
        self.dtype = torch.promote_types(self.precision, torch.float32)
        self.isz = torch.empty((), dtype=self.dtype).element_size()
        self.full = output == "full"
        self.device = inputs.device

    @property
    def tolerance(self) -> float:
        """Relative tolerance of the proofs and the self-check at the forward's precision."""
        return exact.tolerance(self.precision, self.device)

    # ----------------------------------------------------------------------------- forward
    def select(self, out: Any, x: ModelInputs) -> torch.Tensor:
        """Model outputs for the samples ``x`` -> the differentiated components (n, C)."""
        return selected_outputs(self.output, out, len(x), x.index if self.with_index else None)

    def forward(self, x: ModelInputs, leaves: dict[str, torch.Tensor]) -> Any:
        recorder = UseRecorder({id(t): n for n, t in leaves.items()}, self.protect,
                                     self.originals)
        with recorder:
            out = self.call(leaves, x)
        if recorder.foreign_seen:
            raise ValueError(
                f"Invalid model: parameters {sorted(recorder.foreign_seen)} are reached through "
                "references the module does not register (e.g. a Python list), which "
                "torch.func.functional_call cannot substitute, so their derivatives would be "
                "lost. Fix: register them (nn.ParameterList, nn.ModuleList) or read them from "
                "the module's attributes in forward."
            )
        return recorder, out

    def call(self, params: dict[str, torch.Tensor], x: ModelInputs) -> torch.Tensor:
        """The selected outputs (n, C) of the model with ``params`` replacing its own, on a copy
        of the inputs (a forward that writes into its input must not reach the caller's)."""
        restore_python_state(self.python_state, fresh=True)  # every forward: the same function
        with torch.no_grad():
            for n, pristine in self.written.items():
                self.base[n].copy_(pristine)
        params = {n: p.clone() if n in self.written else p for n, p in params.items()}
        x = x.clone()
        try:
            with self.autocast():
                out = functional_call(self.model, self.base | params, x.args, x.kwargs)
        except RuntimeError as error:
            if isinstance(error, torch.OutOfMemoryError):
                raise
            raise ValueError(_forward_error(self, error, len(x))) from error
        return self.select(out, x)

    # -------------------------------------------------------------------------------- plan
    def leaves(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return {n: self.base[n].clone().requires_grad_(True) for n in names}

    def scout(self, leaves: dict[str, torch.Tensor]) -> tuple[UseRecorder, torch.Tensor]:
        """Sample 0 alone: which calls touch each parameter, and which outputs the model
        overwrites in place (those are copied from now on). Refuses random forwards: a global
        generator that moves, or a second forward of the sample that disagrees."""
        self.protect: frozenset[int] = frozenset()
        self.written: dict[str, torch.Tensor] = {}
        self.outputs: torch.Tensor | None = None  # (N, C) outputs of the pass, see record()
        views = self.base  # the leaves stand in for the selected parameters: copy the rest
        self.base = {n: t if n in leaves else t.clone() for n, t in views.items()}
        before = guards.random_states(self.device)
        recorder, f1 = self.forward(self.x[:1], leaves)
        self.causes = [_carried(s) for s in carried_state(self.python_state)]
        self.causes += coupling_causes(self.model)
        # Tensors the forward writes into (Embedding(max_norm=...) rows, spectral-norm power
        # iterations in training mode, a weight clamped in forward) stay private copies, reset
        # before every forward so that each computes the same function (and the user's own
        # are never written); a selected one is given to each forward as a fresh copy of its
        # leaf (:meth:`call`). The others go back to views.
        self.written = {n: views[n].clone() for n, c in self.base.items()
                        if (leaves[n] if n in leaves else c)._version}
        self.base = {n: (c.clone() if n in leaves else c) if n in self.written else views[n]
                     for n, c in self.base.items()}
        if recorder.overwritten() or self.written.keys() & leaves.keys():
            with torch.no_grad():
                for n in self.written.keys() & leaves.keys():
                    leaves[n].copy_(self.written[n])
            self.protect = recorder.overwritten()
            recorder, f1 = self.forward(self.x[:1], leaves)
        guards.refuse_reentrant(f1, leaves)
        self.precision = guards.lowest_precision(self.precision, f1, recorder.dtypes)
        with torch.no_grad():
            again = self.call(leaves, self.x[:1])
        tol = guards.coupling_tolerance(self.precision, self.device)
        guards.refuse_randomness(before, self.device, recorder.functions,
                                 guards.coupling_error(f1.detach(), again), tol, self.causes)
        self.alone = again  # sample 0 in a batch of one, for the coupling proof
        return recorder, f1

    def rules_for(self, recorder: UseRecorder, f1: torch.Tensor,
                  leaves: dict[str, torch.Tensor]) -> dict[str, list[rules.Use]]:
        """Parameters whose structured rule holds on the scout: recognised, batch-first calls
        that are the parameter's only route to the outputs.

        The route check compares the rule's gradient with autograd's for one random
        combination ``Σ_c r_c f_c`` of the output components (Gaussian ``r`` from a fixed
        private generator): a rule off in any component is off in the combination with
        probability 1, at the cost of one backward instead of C.
        """
        if self.method == "jacobian":
            return {}
        found = {n: us for n, us in recorder.uses.items() if rules.qualifies(us, 1)}
        outs = {id(u.out): u.out for us in found.values() for u in us if u.out is not None}
        gen = torch.Generator(device=f1.device).manual_seed(f1.shape[1])
        r = torch.randn(f1.shape[1], 1, generator=gen, device=f1.device, dtype=f1.dtype)
        self.r = r
        fr = f1 @ r
        delta = self.cotangents(fr, outs, retain=True)
        found = {n: us for n, us in found.items() if all(id(u.out) in delta for u in us)}
        hidden = guards.hidden_route(fr, {n: leaves[n] for n in found},
                                     lambda n: self.chunk_term("psg", found[n], delta),
                                     self.tolerance)
        return {n: us for n, us in found.items() if n not in hidden}

    def foreign(self, f: torch.Tensor, outs: dict[int, torch.Tensor],
                delta: dict[int, Any]) -> set[int]:
        """Ids of captured outputs whose rows are not owned by their samples in this chunk
        (:func:`guards.foreign_rows`), from the chunk's cotangents ``delta`` (C, *y.shape) for
        all components; one more backward of ``f``, whose graph it releases."""
        r = self.r.reshape(-1).to(self.dtype)
        plain = {k: torch.tensordot(r, d, dims=1) for k, d in delta.items()}
        return guards.foreign_rows((f @ self.r)[:, 0], plain, outs, self.tolerance)

    def record(self, lo: int, f: torch.Tensor) -> None:
        """Keep the outputs of samples ``lo..`` as the pass computed them (first pass only)."""
        if self.outputs is None:
            self.outputs = f.new_empty((self.N, self.C)).detach()
            self.recorded = torch.zeros(self.N, dtype=torch.bool)
        if not self.recorded[lo]:
            self.outputs[lo : lo + f.shape[0]] = f.detach()
            self.recorded[lo : lo + f.shape[0]] = True

    def prove_independent(self, leaves: dict[str, torch.Tensor], chunk: int, lo: int = 0,
                          hi: int | None = None) -> None:
        """Refuse coupled or random models (:func:`.coupling.prove_independent`)."""
        coupling.prove_independent(self, leaves, chunk, lo, self.N if hi is None else hi)

    def run(self, explain: bool = False) -> torch.Tensor:
        """The exact kernel: structured terms where a rule holds, per-sample Jacobians else."""
        leaves = self.leaves(self.names)
        recorder, f1 = self.scout(leaves)
        self.C = f1.shape[1]
        N, C = self.N, self.C
        kernel_bytes = N * N * (C * C if self.full else 1) * self.isz
        found = self.rules_for(recorder, f1, leaves)
        forms = {n: form(us, N, C, self.isz, full=self.full, budget=self.budget,
                         gram_always=self.method == "structured") for n, us in found.items()}
        plan = structured_plan(self.budget, N, kernel_bytes, max(recorder.out_bytes, 1), forms,
                               self.full)
        plan.jacobian += [n for n in self.names if n not in found]
        self.free = self.budget - kernel_bytes
        K = torch.zeros((N, N, C, C) if self.full else (N, N), dtype=self.dtype,
                        device=self.device)
        counts = {n: len(recorder.uses[n]) for n in found}
        fallback = list(plan.jacobian)
        if plan.streaming:
            fallback += structured.streaming(self, K, plan, leaves, counts)
        else:
            for names in plan.groups:
                fallback += structured.stored(self, K, plan, names, leaves, counts)
        self.prove_independent(leaves, plan.chunk)
        if fallback:
            self._jacobian(K, sorted(set(fallback), key=self.names.index), recorder)
        _explain(plan, fallback, explain)
        return K

    def _jacobian(self, K: torch.Tensor, names: list[str], recorder: UseRecorder) -> None:
        """K += J Jᵀ of ``names`` by per-sample Jacobians, chunked within the budget."""
        C = self.C
        act = (2 + 2 * C) * max(recorder.out_bytes, 1)  # one sample's graph, C cotangents
        sizes = {n: C * self.base[n].numel() * self.isz for n in names}
        need = K.numel() * self.isz + act + 4 * max(sizes.values())
        if need > self.budget:
            raise MemoryBudgetError(
                f"Invalid memory_budget: {self.budget!r} bytes; this request needs at least "
                f"{need}: one sample's Jacobian rows of {max(sizes, key=sizes.__getitem__)!r} "
                "(no structured rule) beside the kernel. "
                f"Fix: memory_budget={need} or more, or a params subset without it."
            )
        vmap_ok = not recorder.functions & exact.VMAP_UNSAFE
        rows = exact.PerSampleJacobian(self.call, self.base, self.x, C, vmap_ok, self.dtype,
                                       self.tolerance)
        exact.contract(K, rows, sizes, self.free, act, self.full)

    def cotangents(self, f: torch.Tensor, outs: dict[int, torch.Tensor], retain: bool = False,
                   components: Sequence[int] | None = None) -> dict[int, Any]:
        """``∂f_c/∂y`` stacked over ``components`` (default all), (c, *y.shape), for each
        captured output ``y`` that ``f`` depends on; outputs with no cotangent for any of the
        components are left out."""
        outs = {k: y for k, y in outs.items() if y.requires_grad}  # else: used under no_grad
        ys = list(outs.values())
        if not ys:
            return {}
        cs = list(range(f.shape[1])) if components is None else list(components)
        per_c = [torch.autograd.grad(f[:, c].sum(), ys, retain_graph=retain or i < len(cs) - 1,
                                     allow_unused=True) for i, c in enumerate(cs)]
        delta = {}
        for i, (k, y) in enumerate(outs.items()):
            gs = [g[i] for g in per_c]
            if all(g is None for g in gs):
                continue
            delta[k] = (gs[0].unsqueeze(0) if len(cs) == 1 else torch.stack(  # a view for one
                [torch.zeros_like(y) if g is None else g for g in gs])).to(self.dtype)
        return delta

    def chunk_term(self, form: str, uses: list[rules.Use], delta: dict[int, torch.Tensor]) -> Any:
        """Per chunk: per-sample gradients (n, C, P) for "psg", rows (X, Δ) for "gram", the
        embedding's and the linear calls' rows for "tied"."""
        if form == "gram":
            return structured.layer_rows(uses, delta)
        if form == "tied":
            return structured.tied_rows(uses, delta)
        return structured.per_sample_grads(uses, delta)


def _explain(plan: Plan, fallback: list[str], explain: bool) -> None:
    """Print (``explain=True``) or log at DEBUG the plan and what moved at run time."""
    if not explain and not logger.isEnabledFor(logging.DEBUG):
        return
    text = plan.describe()
    late = sorted(set(fallback) - set(plan.jacobian))
    if late:
        text += "\nmoved to the per-sample Jacobian at run time: " + ", ".join(late)
    if explain:
        print(text)
    logger.debug("empirical_ntk plan:\n%s", text)


def _dtypes(x: ModelInputs) -> str:
    return "/".join(sorted({str(t.dtype) for t in x.tensors()}))


def _carried(attribute: str) -> str:
    return (f"{attribute} is replaced or written by forward: a state carried from call to "
            "call (a recurrent state, a cache), so a sample's output depends on the calls "
            "before it. The engine runs every forward from the state at the call. Fix: reset "
            "the state before the call, or pass it to the model as an input with one row per "
            "sample")


def _forward_error(e: Engine, error: RuntimeError, n: int) -> str:
    """The message for a forward of ``n`` samples that raised: a dtype clash names the
    cast; anything else a forward that does not take any subset of the batch."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    if _DTYPE_CLASH.search(first):
        return (
            f"Invalid dtype: the model's forward mixes dtypes ({first}) with inputs of "
            f"{_dtypes(e.x)} and parameters of {e.precision}"
            + (f" (cast by dtype={e.cast})" if e.cast else "") + ": something in "
            "forward has its own dtype (x.float(), .to(torch.float32), a tensor created "
            "or held outside the parameters and buffers). Fix: pass inputs in the model's "
            "dtype and dtype=None, or make forward follow its parameters (x.to(w.dtype))."
        )
    held = carried_state(e.python_state, changed_only=False)
    what = "a batch of one sample" if n == 1 else f"a chunk of {n} samples"
    split = len(e.x.batched()) > 1
    return (
        f"Invalid model: its forward raised on {what} (the engine runs sample 0 alone, "
        f"chunks of the batch, and the exact path every sample alone): {first}. A forward "
        "that runs on one batch size only needs several samples at once (a reshape or "
        "view over the batch) or holds something sized for another batch; the per-sample "
        "NTK needs a forward that takes any subset of the samples. Fix: make forward work "
        "on any batch size."
        + (f" The model holds tensors as attributes ({'; '.join(held[:3])}): if one is a "
           "state carried from call to call with rows of another batch (a recurrent "
           "state, a KV cache), reset it before the call (e.g. to None, if forward then "
           "starts a fresh one) or pass it to the model as an input with one row per "
           "probe sample." if held else "")
        + (f" Arguments split per sample: {e.x!r}; one shared by every sample whose length "
           "happens to be N must be declared: ModelInputs(inputs, batch_dim={name: None})."
           if split else "")
    )
