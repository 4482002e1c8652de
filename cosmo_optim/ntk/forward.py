"""The differentiated forward every executor shares, and the scout that learns it (T4).

:func:`scout` runs sample 0 alone, once or twice, and returns one immutable :class:`Forward`:
the model called with substitutable parameters (``functional_call`` on detached, cast views: the
user's tensors are never touched), the selection of output components, which calls touch each
parameter and which of those keep a structured rule (the route check), which outputs the model
overwrites in place (copied from then on), which tensors it writes into (reset before every
forward), sample 0's outputs alone, and the precision the forward really computes in. Executors
take the :class:`Forward` and their budget as arguments and return their terms; none writes it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from cosmo_optim._common import PythonState, carried_state, python_state, restore_python_state
from cosmo_optim.ntk import guards, rules
from cosmo_optim.ntk.admission import coupling_causes
from cosmo_optim.ntk.inputs import ModelInputs
from cosmo_optim.ntk.modes import Autocast
from cosmo_optim.ntk.outputs import Output, selected_outputs, takes_index
from cosmo_optim.ntk.per_sample import VMAP_UNSAFE, tolerance
from cosmo_optim.ntk.recorder import UseRecorder

__all__ = ["Forward", "scout"]

_DTYPE_CLASH = re.compile(r"dtype|scalar type|input type \(\w+\) and \w+ type", re.IGNORECASE)
Uses = Mapping[str, list[rules.Use]]


@dataclass(frozen=True)
class Forward:
    """One request's differentiated forward, as the scout of sample 0 found it (immutable)."""

    model: nn.Module
    x: ModelInputs  # the probe batch (cast when ``cast`` is set)
    names: tuple[str, ...]  # the selected parameters, in the model's order
    base: Mapping[str, Tensor]  # every parameter and buffer: detached views, copies if written
    leaves: Mapping[str, Tensor]  # the selected parameters as the leaves of every graph
    output: Output
    autocast: Autocast  # the caller's, around every forward of the model
    state: PythonState  # the modules' attributes, reset before every forward
    originals: Mapping[int, str]  # id of the user's own parameter -> name: never to be seen
    cast: torch.dtype | None = None
    written: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)  # pristine values
    protect: frozenset[int] = frozenset()  # recognised calls whose outputs the model gets copied
    combine: Tensor | None = None  # (C_model, C): random combinations of the outputs (sketch)
    precision: torch.dtype = torch.float32  # the coarsest dtype the forward computes in
    C: int = 0  # output components per sample
    uses: Uses = dataclasses.field(default_factory=dict)  # the scout's calls per parameter
    structured: Uses = dataclasses.field(default_factory=dict)  # those whose rule holds
    alone: Tensor | None = None  # sample 0's outputs in a batch of one
    causes: tuple[str, ...] = ()  # what in the model can couple samples, with fixes
    r: Tensor | None = None  # (C, 1) Gaussian combination of the components (the proofs')
    out_bytes: int = 1  # bytes of one sample's forward tensors
    vmap_ok: bool = True  # no function whose vmap batching rule is known to be wrong

    @property
    def N(self) -> int:
        return len(self.x)

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def dtype(self) -> torch.dtype:
        """The kernel's dtype: the forward's precision, accumulated in at least float32."""
        return torch.promote_types(self.base[self.names[0]].dtype, torch.float32)

    @property
    def isz(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def tolerance(self) -> float:
        """Relative tolerance of the proofs and the self-check at the forward's precision."""
        return tolerance(self.precision, self.device)

    def select(self, out: Any, x: ModelInputs) -> Tensor:
        """Model outputs for the samples ``x`` -> the differentiated components (n, C)."""
        f = selected_outputs(self.output, out, len(x),
                             x.index if takes_index(self.output) else None)
        return f if self.combine is None else f @ self.combine.to(f.dtype)

    def call(self, params: Mapping[str, Tensor], x: ModelInputs) -> Tensor:
        """The selected outputs (n, C) of the model with ``params`` replacing its own, on a copy
        of the inputs (a forward that writes into its input must not reach the caller's)."""
        restore_python_state(self.state, fresh=True)  # every forward: the same function
        with torch.no_grad():
            for n, pristine in self.written.items():
                self.base[n].copy_(pristine)
        params = {n: p.clone() if n in self.written else p for n, p in params.items()}
        x = x.clone()
        try:
            with self.autocast():
                out = functional_call(self.model, {**self.base, **params}, x.args, x.kwargs)
        except RuntimeError as error:
            if isinstance(error, torch.OutOfMemoryError):
                raise
            raise ValueError(_forward_error(self, error, len(x))) from error
        return self.select(out, x)

    def recorded(self, x: ModelInputs) -> tuple[UseRecorder, Tensor]:
        """The outputs (n, C) of samples ``x`` with the graph to :attr:`leaves`, and the
        recorder of every call that touched a selected parameter."""
        recorder = UseRecorder({id(t): n for n, t in self.leaves.items()}, self.protect,
                               dict(self.originals))
        with recorder:
            out = self.call(self.leaves, x)
        if recorder.foreign_seen:
            raise ValueError(
                f"Invalid model: parameters {sorted(recorder.foreign_seen)} are reached through "
                "references the module does not register (e.g. a Python list), which "
                "torch.func.functional_call cannot substitute, so their derivatives would be "
                "lost. Fix: register them (nn.ParameterList, nn.ModuleList) or read them from "
                "the module's attributes in forward."
            )
        return recorder, out

    def cotangents(self, f: Tensor, outs: Mapping[int, Tensor], retain: bool = False,
                   components: Sequence[int] | None = None) -> dict[int, Tensor]:
        """``∂f_c/∂y`` stacked over ``components`` (default all), (c, *y.shape), for each
        captured output ``y`` that ``f`` depends on; outputs with no cotangent for any of the
        components are left out."""
        live = {k: y for k, y in outs.items() if y.requires_grad}  # else: used under no_grad
        ys = list(live.values())
        if not ys:
            return {}
        cs = list(range(f.shape[1])) if components is None else list(components)
        per_c = [torch.autograd.grad(f[:, c].sum(), ys, retain_graph=retain or i < len(cs) - 1,
                                     allow_unused=True) for i, c in enumerate(cs)]
        delta = {}
        for i, (k, y) in enumerate(live.items()):
            gs = [g[i] for g in per_c]
            if all(g is None for g in gs):
                continue
            delta[k] = (gs[0].unsqueeze(0) if len(cs) == 1 else torch.stack(  # a view for one
                [torch.zeros_like(y) if g is None else g for g in gs])).to(self.dtype)
        return delta

    def foreign(self, f: Tensor, outs: Mapping[int, Tensor],
                delta: Mapping[int, Tensor]) -> set[int]:
        """Ids of captured outputs whose rows are not owned by their samples in this chunk
        (:func:`guards.foreign_rows`), from the chunk's cotangents ``delta`` (C, *y.shape) for
        all components; one more backward of ``f``, whose graph it releases."""
        assert self.r is not None
        r = self.r.reshape(-1).to(self.dtype)
        plain = {k: torch.tensordot(r, d, dims=1) for k, d in delta.items()}
        return guards.foreign_rows((f @ self.r)[:, 0], plain, dict(outs), self.tolerance)


def scout(model: nn.Module, selected: Mapping[str, nn.Parameter], inputs: ModelInputs,
          output: Output, *, dtype: torch.dtype | None, autocast: Autocast,
          values: Mapping[str, Tensor] | None = None, structured: bool = True,
          combine: Callable[[int, Tensor], Tensor | None] | None = None) -> Forward:
    """Sample 0 alone: which calls touch each parameter, which outputs the model overwrites in
    place (copied from then on), which tensors it writes into; refuses random forwards (a
    global generator that moves, or a second forward of the sample that disagrees) and
    reentrant checkpoints that hide parameters. ``structured``: also find the parameters whose
    rule holds (:func:`_routed`); ``combine(C, f1)``: the random combinations of the C output
    components the sketch differentiates instead of the components (None: the components)."""
    fwd = _first(model, selected, inputs, output, dtype, autocast, values or {})
    views = fwd.base  # the leaves stand in for the selected parameters: copy the rest
    fwd = dataclasses.replace(fwd, base={n: t if n in fwd.leaves else t.clone()
                                         for n, t in views.items()})
    before = guards.random_states(fwd.device)
    recorder, f1 = fwd.recorded(fwd.x[:1])
    causes = (*(_carried(s) for s in carried_state(fwd.state)), *coupling_causes(model))
    fwd = _written(fwd, views)
    if recorder.overwritten() or fwd.written.keys() & fwd.leaves.keys():
        with torch.no_grad():
            for n in fwd.written.keys() & fwd.leaves.keys():
                fwd.leaves[n].copy_(fwd.written[n])
        fwd = dataclasses.replace(fwd, protect=recorder.overwritten())
        recorder, f1 = fwd.recorded(fwd.x[:1])
    combined = combine(f1.shape[1], f1) if combine is not None else None
    if combined is not None:
        fwd = dataclasses.replace(fwd, combine=combined)
        f1 = f1 @ combined.to(f1.dtype)
    guards.refuse_reentrant(f1, dict(fwd.leaves))
    precision = guards.lowest_precision(fwd.precision, f1, recorder.dtypes)
    fwd = dataclasses.replace(fwd, precision=precision, C=f1.shape[1], causes=causes,
                              uses=recorder.uses, out_bytes=max(recorder.out_bytes, 1),
                              vmap_ok=not recorder.functions & VMAP_UNSAFE)
    with torch.no_grad():
        again = fwd.call(fwd.leaves, fwd.x[:1])
    tol = guards.coupling_tolerance(precision, fwd.device)
    guards.refuse_randomness(before, fwd.device, recorder.functions,
                             guards.coupling_error(f1.detach(), again), tol, causes)
    gen = torch.Generator(device=f1.device).manual_seed(f1.shape[1])
    r = torch.randn(f1.shape[1], 1, generator=gen, device=f1.device, dtype=f1.dtype)
    fwd = dataclasses.replace(fwd, alone=again, r=r)
    return dataclasses.replace(fwd, structured=_routed(fwd, f1) if structured else {})


def _first(model: nn.Module, selected: Mapping[str, nn.Parameter], x: ModelInputs,
           output: Output, dtype: torch.dtype | None, autocast: Autocast,
           values: Mapping[str, Tensor]) -> Forward:
    """The forward before the scout: detached (cast) views of every parameter and buffer
    (``values``: the full values of sharded parameters, :mod:`.sharded`), fresh leaves."""
    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    base = {n: cast(values.get(n, t).detach()) for n, t in model.named_parameters()}
    base |= {n: cast(t.detach()) for n, t in model.named_buffers()}
    names = tuple(selected)
    return Forward(
        model=model, x=x.to(dtype=dtype) if dtype else x, names=names, base=base,
        leaves={n: base[n].clone().requires_grad_(True) for n in names}, output=output,
        autocast=autocast, state=python_state(model),
        originals={id(p): n for n, p in selected.items()}, cast=dtype,
        precision=base[names[0]].dtype)


def _written(fwd: Forward, views: Mapping[str, Tensor]) -> Forward:
    """Tensors the scout's forward wrote into (Embedding(max_norm=...) rows, spectral-norm
    power iterations in training mode, a weight clamped in forward) stay private copies,
    reset before every forward so that each computes the same function (and the user's own
    are never written); a selected one is given to each forward as a fresh copy of its leaf
    (:meth:`Forward.call`). The others go back to views."""
    leaves = fwd.leaves
    written = {n: views[n].clone() for n, c in fwd.base.items()
               if (leaves[n] if n in leaves else c)._version}
    base = {n: (c.clone() if n in leaves else c) if n in written else views[n]
            for n, c in fwd.base.items()}
    return dataclasses.replace(fwd, base=base, written=written)


def _routed(fwd: Forward, f1: Tensor) -> dict[str, list[rules.Use]]:
    """Parameters whose structured rule holds on the scout: recognised, batch-first calls
    that are the parameter's only route to the outputs.

    The route check compares the rule's gradient with autograd's for one random
    combination ``Σ_c r_c f_c`` of the output components (:attr:`Forward.r`): a rule off in
    any component is off in the combination with probability 1, at the cost of one backward
    instead of C.
    """
    assert fwd.r is not None
    found = {n: us for n, us in fwd.uses.items() if rules.qualifies(us, 1)}
    outs = {id(u.out): u.out for us in found.values() for u in us if u.out is not None}
    fr = f1 @ fwd.r
    delta = fwd.cotangents(fr, outs, retain=True)
    found = {n: us for n, us in found.items() if all(id(u.out) in delta for u in us)}
    hidden = guards.hidden_route(fr, {n: fwd.leaves[n] for n in found},
                                 lambda n: rules.per_sample_grads(found[n], delta),
                                 fwd.tolerance)
    return {n: us for n, us in found.items() if n not in hidden}


def _dtypes(x: ModelInputs) -> str:
    return "/".join(sorted({str(t.dtype) for t in x.tensors()}))


def _carried(attribute: str) -> str:
    return (f"{attribute} is replaced or written by forward: a state carried from call to "
            "call (a recurrent state, a cache), so a sample's output depends on the calls "
            "before it. The engine runs every forward from the state at the call. Fix: reset "
            "the state before the call, or pass it to the model as an input with one row per "
            "sample")


def _forward_error(fwd: Forward, error: RuntimeError, n: int) -> str:
    """The message for a forward of ``n`` samples that raised: a dtype clash names the
    cast; anything else a forward that does not take any subset of the batch."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    if _DTYPE_CLASH.search(first):
        return (
            f"Invalid dtype: the model's forward mixes dtypes ({first}) with inputs of "
            f"{_dtypes(fwd.x)} and parameters of {fwd.precision}"
            + (f" (cast by dtype={fwd.cast})" if fwd.cast else "") + ": something in "
            "forward has its own dtype (x.float(), .to(torch.float32), a tensor created "
            "or held outside the parameters and buffers). Fix: pass inputs in the model's "
            "dtype and dtype=None, or make forward follow its parameters (x.to(w.dtype))."
        )
    held = carried_state(fwd.state, changed_only=False)
    what = "a batch of one sample" if n == 1 else f"a chunk of {n} samples"
    split = len(fwd.x.batched()) > 1
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
        + (f" Arguments split per sample: {fwd.x!r}; one shared by every sample whose length "
           "happens to be N must be declared: ModelInputs(inputs, batch_dim={name: None})."
           if split else "")
    )
