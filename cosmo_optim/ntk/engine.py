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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from cosmo_optim._common import MemoryBudgetError, python_state, restore_python_state
from cosmo_optim.ntk import coupling, guards, rules, structured
from cosmo_optim.ntk import per_sample as exact
from cosmo_optim.ntk.plan import Plan, form, structured_plan
from cosmo_optim.ntk.recorder import UseRecorder

__all__ = ["Engine", "Output", "selected_outputs"]

Output = str | int | Callable[[torch.Tensor], torch.Tensor]
_DTYPE_CLASH = re.compile(r"dtype|scalar type", re.IGNORECASE)
logger = logging.getLogger("cosmo_optim.ntk")


class Engine:
    """One kernel request: scout, plan, structured pass, jacobian pass."""

    def __init__(
        self, model: nn.Module, selected: dict[str, nn.Parameter], inputs: torch.Tensor,
        output: Output, method: str, dtype: torch.dtype | None, budget: int,
    ) -> None:
        self.model, self.output, self.method, self.budget = model, output, method, budget
        self.python_state = python_state(model)  # counters and caches reset before each forward
        self.cast = dtype
        cast = (lambda t: t.to(dtype) if t.is_floating_point() else t) if dtype else (lambda t: t)
        self.x = cast(inputs)
        self.N = inputs.shape[0]
        # Detached (cast) views: the user's parameters and their .grad are never touched; the
        # scout replaces those the forward writes into with copies.
        self.base = {n: cast(t.detach()) for n, t in model.named_parameters()}
        self.base |= {n: cast(t.detach()) for n, t in model.named_buffers()}
        self.names = list(selected)
        self.originals = {id(p): n for n, p in selected.items()}
        self.dtype = self.base[self.names[0]].dtype
        self.isz = torch.empty((), dtype=self.dtype).element_size()
        self.full = output == "full"

    # ----------------------------------------------------------------------------- forward
    def select(self, out: Any, n: int) -> torch.Tensor:
        """Model outputs for n samples -> the differentiated components (n, C)."""
        return selected_outputs(self.output, out, n)

    def forward(self, x: torch.Tensor, leaves: dict[str, torch.Tensor]) -> Any:
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

    def call(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The selected outputs (n, C) of the model with ``params`` replacing its own, on a copy
        of the inputs (a forward that writes into its input must not reach the caller's)."""
        restore_python_state(self.python_state)  # every forward computes the same function
        with torch.no_grad():
            for n, pristine in self.written.items():
                self.base[n].copy_(pristine)
        out = functional_call(self.model, self.base | params, (x.clone(),))
        return self.select(out, x.shape[0])

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
        before = guards.random_states(self.x.device)
        recorder, f1 = self._first_forward(leaves)
        if recorder.overwritten():
            self.protect = recorder.overwritten()
            recorder, f1 = self.forward(self.x[:1], leaves)
        # Tensors the forward writes into (Embedding(max_norm=...) rows, spectral-norm power
        # iterations in training mode, a weight clamped in forward) stay private copies, reset
        # before every forward so that each computes the same function (and the user's own
        # are never written); the others go back to views.
        self.written = {n: views[n].clone() for n, c in self.base.items()
                        if (leaves[n] if n in leaves else c)._version}
        self.base = {n: (c.clone() if n in leaves else c) if n in self.written else views[n]
                     for n, c in self.base.items()}
        with torch.no_grad():
            again = self.call(leaves, self.x[:1])
        tol = guards.coupling_tolerance(self.dtype, self.x.device)
        guards.refuse_randomness(before, self.x.device, recorder.functions,
                                 guards.coupling_error(f1.detach(), again), tol)
        self.alone = again  # sample 0 in a batch of one, for the coupling proof
        return recorder, f1

    def _first_forward(self, leaves: dict[str, torch.Tensor]) -> tuple[UseRecorder, Any]:
        """The scout's forward; a forward that mixes dtypes gets an error naming the cast."""
        try:
            return self.forward(self.x[:1], leaves)
        except RuntimeError as error:
            if isinstance(error, torch.OutOfMemoryError):
                raise
            if not _DTYPE_CLASH.search(str(error)):
                raise ValueError(
                    "Invalid model: its forward raised on a batch of one sample (the engine runs "
                    f"sample 0 alone, and the exact path runs every sample alone): "
                    f"{str(error).splitlines()[0]}. If it runs on the whole batch, it needs "
                    "several samples at once (a reshape or view over the batch), which couples "
                    "them: the per-sample NTK is undefined. Fix: make forward work on any "
                    "batch size."
                ) from error
            first = str(error).splitlines()[0]
            raise ValueError(
                f"Invalid dtype: the model's forward mixes dtypes ({first}) with inputs of "
                f"{self.x.dtype} and parameters of {self.dtype}"
                + (f" (cast by dtype={self.cast})" if self.cast else "") + ": something in "
                "forward has its own dtype (x.float(), .to(torch.float32), a tensor created "
                "or held outside the parameters and buffers). Fix: pass inputs in the model's "
                "dtype and dtype=None, or make forward follow its parameters (x.to(w.dtype))."
            ) from error

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
                                     lambda n: self.chunk_term("psg", found[n], delta))
        return {n: us for n, us in found.items() if n not in hidden}

    def foreign(self, f: torch.Tensor, outs: dict[int, torch.Tensor],
                delta: dict[int, Any]) -> set[int]:
        """Ids of captured outputs whose rows are not owned by their samples in this chunk
        (:func:`guards.foreign_rows`), from the chunk's cotangents ``delta`` (C, *y.shape) for
        all components; one more backward of ``f``, whose graph it releases."""
        r = self.r.reshape(-1)
        plain = {k: torch.tensordot(r, d, dims=1) for k, d in delta.items()}
        return guards.foreign_rows((f @ self.r)[:, 0], plain, outs)

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
                        device=self.x.device)
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
        rows = exact.PerSampleJacobian(self.call, self.base, self.x, C, vmap_ok)
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
            delta[k] = gs[0].unsqueeze(0) if len(cs) == 1 else torch.stack(  # a view for one
                [torch.zeros_like(y) if g is None else g for g in gs])
        return delta

    def chunk_term(self, form: str, uses: list[rules.Use], delta: dict[int, torch.Tensor]) -> Any:
        """Per chunk: per-sample gradients (n, C, P) for "psg", rows (X, Δ) for "gram", the
        embedding's and the linear calls' rows for "tied"."""
        if form == "gram":
            return structured.layer_rows(uses, delta)
        if form == "tied":
            return structured.tied_rows(uses, delta)
        return structured.per_sample_grads(uses, delta)


def selected_outputs(output: Output, out: Any, n: int) -> torch.Tensor:
    """The components (n, C) of ``output`` (a selector, an index or a kernel kind) in the
    model's output ``out`` for n samples, or a ValueError naming what is wrong."""
    if callable(output):
        out = output(out)
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        raise ValueError(
            f"Invalid output: the model returned a {kind}, not a tensor, so the kernel "
            "does not know which values are the network's output. Fix: pass a selector, "
            "e.g. output=lambda out: out[0] or output=lambda out: out.logits."
        )
    if out.dim() == 0 or out.shape[0] != n:
        raise ValueError(
            f"Invalid output: the selected output has shape {tuple(out.shape)} for {n} "
            f"samples; it must have the samples on dim 0, shape ({n},) or ({n}, ...)."
        )
    flat = out.reshape(n, -1)
    if isinstance(output, int):
        if not -flat.shape[1] <= output < flat.shape[1]:
            raise ValueError(
                f"Invalid output: {output!r}; the model has {flat.shape[1]} output "
                "components per sample. Fix: pick an index in range."
            )
        return flat[:, output : output + 1 or None]
    return flat


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
