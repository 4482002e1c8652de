"""Empirical neural tangent kernel of any ``nn.Module`` (docs/theory.md T4, T7).

``Θ(x, x') = Σ_p ∂f(x)/∂θ_p · ∂f(x')/∂θ_p = J Jᵀ`` on a probe batch, computed without ever
holding the N×P Jacobian: layers with a structured rule (``linear``, ``conv1d``, ``conv2d``,
``embedding``, ``layer_norm`` affine parameters, and the projections of self-attention
``nn.MultiheadAttention``, re-dispatched as ``linear`` calls; see :mod:`cosmo_optim.ntk.rules`)
need one forward and one backward per output component; every other parameter goes through a
chunked jacobian contraction.

Strategies (``method=``), with their cost for N samples, C output components and, per layer,
R rows per sample (sequence positions, conv pixels, repeated calls), fan-in d_in, fan-out d_out:

* ``"structured"`` — the Gram rule ``Θ_W = Σ_{s,t} (x_is·x_jt)(δ_is·δ_jt)`` for every recognised
  weight: time O(N² R² (d_in + C d_out)), memory O(N R (d_in + C d_out)) stored plus one block of
  O(b R · N R) for b samples at a time. Biases: per-sample gradients ``Σ_s δ_is``.
* ``"jacobian"`` — per-sample gradients of every selected parameter, contracted block by block:
  ``vmap(jacrev)`` where its batching rules are trusted, else one sample's forward and C
  backward passes at a time (:mod:`cosmo_optim.ntk.per_sample`). Time O(C·(forward+backward) per
  sample + C N² P), memory O(m C P_block) for a chunk of m samples, m chosen from the budget.
* ``"auto"`` — per recognised parameter the cheaper of the Gram rule and its per-sample-gradient
  form ``<Σ_s δ_isᵀ x_is, Σ_t δ_jtᵀ x_jt>`` (time O(C N R d_in d_out + C N² d_in d_out), memory
  O(N C d_in d_out); for a conv, torch's weight-gradient kernel vmapped over samples, never the
  ``unfold`` matrix); the jacobian path for everything else. LayerNorm affine parameters, grouped
  convs and convs with string padding always use the per-sample form.
* ``"sketch"`` — an unbiased estimate ``Θ̂ = Φ Φᵀ`` from Kronecker sketches ``Pᵀ G_i Q`` of
  every weight's per-sample gradient, built from each layer's rows without forming ``G_i``
  (k = ``sketch_dim`` columns per projected side, k/4 of them along the top gradient
  directions of 8 probe samples, one side of ≤ 12k entries kept exact;
  :mod:`cosmo_optim.ntk.sketch`): time O(N R k (d_in + d_out + d_kept)) per weight on top of
  one forward and C backwards (and those of the 8 probe samples), plus O(C² N² F) for the
  product over F ≈ Σ_weights k·d_kept features; memory O(N C F). Error model in
  docs/performance.md.

``distributed=True`` (``torch.distributed`` initialised, every rank calling with the same probe
batch) splits the samples across ranks: each computes the features of its shard (exact
per-sample gradients, or sketches), the shards are all-gathered in blocks of parameters, and
every rank returns the same N×N kernel (:mod:`cosmo_optim.ntk.distributed`).

Never silently wrong: a rule is used for a parameter only while its assumptions hold, checked at
run time in every chunk. Every recognised call is batch-first and in one role; where the
one-sample probe sees an in-place op (``ReLU(inplace=True)``, ``h += x``, a hook) overwrite a
captured output, the model gets a copy of it, and version counters prove every captured input
and output unchanged;
every captured output must receive a cotangent; call options a rule does not model
(``max_norm``, ``scale_grad_by_freq``) and parametrised weights are not recognised calls. A
parameter that fails any of these takes the exact jacobian path, whose ``vmap`` rows are checked
against the one-sample loop once per chunk size. ``verify=True`` recomputes a few entries from
the user's module by plain autograd (docs/performance.md gives the cost).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from cosmo_optim._common import (
    MemoryBudgetError,
    check_int,
    parse_bytes,
    preserved,
    training,
    unwrap_parallel,
)
from cosmo_optim.ntk import distributed as distributed_ntk
from cosmo_optim.ntk import guards, rules, sketch
from cosmo_optim.ntk import per_sample as exact
from cosmo_optim.ntk.per_sample import accumulate, chunks

Output = str | int | Callable[[torch.Tensor], torch.Tensor]
ParamFilter = Sequence[str] | Callable[[str, nn.Parameter], bool] | None

METHODS = ("auto", "structured", "jacobian", "sketch")
DEFAULT_SKETCH_DIM = 128  # k: each weight's per-sample gradient sketched to k × d_kept numbers

_OUTPUTS = ("trace", "full")
_DEFAULT_BUDGET = 2 << 30  # bytes: used when memory_budget is None
_SYMMETRIC_FROM = 512  # N from which the Gram form multiplies only blocks above the diagonal


def empirical_ntk(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    params: ParamFilter = None,
    output: Output = "trace",
    method: str = "auto",
    dtype: torch.dtype | None = None,
    memory_budget: int | float | str | None = None,
    train_mode: bool = False,
    sketch_dim: int | None = None,
    sketch_seed: int = 0,
    distributed: bool = False,
    verify: bool | int = False,
) -> torch.Tensor:
    """Empirical NTK ``Θ = J Jᵀ`` of ``model`` on the probe batch ``inputs`` (docs/theory.md T4).

    The kernel that drives function-space dynamics ``f̈ + 3H ḟ = −Θ ∂L/∂f`` (T4) and whose
    eigenmodes are the mean field and perturbations (T7, see :func:`cosmo_optim.ntk_eigen`).

    Args:
        model: any module mapping ``(N, ...)`` inputs to ``(N, ...)`` outputs, samples independent.
        inputs: probe batch, samples on dim 0 (floating point, or integer token ids).
        params: ``None`` (all trainable parameters), a list of parameter names, or a predicate
            ``(name, param) -> bool``. Parameters with ``requires_grad=False`` never count.
        output: ``"trace"`` (N×N, summed over output components), ``"full"`` (N×N×C×C), an
            int (one flattened output component), or a callable mapping the model's output to
            ``(N,)`` or ``(N, ...)`` (traced over its components), e.g. ``lambda out:
            out.logits`` for a model returning a dict, tuple or dataclass.
        method: one of :data:`METHODS` (cost of each in the module docstring).
        dtype: compute in this dtype (e.g. ``torch.float64``); the model is not modified.
        memory_budget: bytes for the engine's own buffers (kernel, captured layer inputs and
            cotangents, Jacobian blocks; activations estimated from a one-sample probe), as a
            number or a string such as ``"1GB"`` or ``"512MiB"``. Default 2 GiB. Every path
            is chosen from this estimate before it allocates; a request that cannot fit
            raises first.
        train_mode: compute with the model in training mode (default: eval mode). Refused for
            BatchNorm (couples samples) and active dropout (random).
        sketch_dim: ``k`` for ``method="sketch"`` (default :data:`DEFAULT_SKETCH_DIM`); the
            relative error falls like ``1/sqrt(k)`` (docs/performance.md). Only with "sketch".
        sketch_seed: seed of the sketch's random projections (a private generator: the
            result is reproducible and the global RNG untouched).
        distributed: split the probe samples across the ranks of the initialised
            ``torch.distributed`` group; every rank must call with the same ``inputs``.
        verify: recompute the entries of ``verify`` samples (``True``: 3) by brute force, from
            the user's module with plain autograd, and raise if they disagree beyond the
            dtype's tolerance. Costs one forward and C backward passes per checked sample
            (docs/performance.md).

    Returns:
        The kernel on ``inputs.device``: ``(N, N)``, or ``(N, N, C, C)`` for ``"full"``. It
        is exact for every method but ``"sketch"``, which returns an unbiased estimate.

    Raises:
        ValueError: invalid ``method``/``output``/``params``/``memory_budget``/``verify``, a
            model output that needs a selector, or a model that couples samples in training
            mode.
        MemoryBudgetError: (a ValueError) the request does not fit ``memory_budget``; raised
            before anything large is allocated.
        RuntimeError: ``verify`` found an entry off by more than the tolerance.

    Every rule checks its assumptions at run time (captured tensors unmodified, cotangents
    present, call options it models) and hands a parameter that fails them to the exact
    per-sample path. Compiled modules run their original eager code. The model's train/eval
    flags, parameters, buffers, ``.grad`` fields and the torch, NumPy and Python RNG states are
    unchanged.

    >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> empirical_ntk(net, torch.randn(5, 3)).shape
    torch.Size([5, 5])
    """
    if method not in METHODS:
        raise ValueError(f'Invalid method "{method}". Must be one of {list(METHODS)}')
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(
            f"Invalid inputs: a {type(inputs).__name__}; it must be one tensor with the samples "
            "on dim 0. Fix: stack the samples, e.g. torch.stack(inputs)."
        )
    if isinstance(output, bool) or not (
            isinstance(output, int) or callable(output) or output in _OUTPUTS):
        raise ValueError(
            f"Invalid output: {output!r}; it must be 'trace', 'full', an int or a callable. "
            "Fix: pass output='trace' for the N×N kernel summed over output components."
        )
    budget = _DEFAULT_BUDGET if memory_budget is None else parse_bytes("memory_budget",
                                                                        memory_budget)
    samples = _verify_samples(verify)
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"Invalid inputs shape: {tuple(inputs.shape)}; it needs N >= 1 samples.")
    k = _sketch_dim(method, sketch_dim)
    model = unwrap_parallel(model)
    selected = _select(model, params)
    _refuse_coupling(model, train_mode)
    if samples and k is not None:
        raise ValueError(
            f"Invalid verify: {verify!r} with method='sketch'; verify compares entries with the "
            "exact kernel, and the sketch is a random estimate of it. Fix: drop verify, or "
            "use an exact method."
        )
    with preserved(model, inputs.device), training(model, train_mode), _no_fastpath(), \
            _eager():
        engine = _Engine(model, selected, inputs, output, method, dtype, budget)
        if distributed:
            kernel = distributed_ntk.kernel(engine, k, sketch_seed)
        elif k is not None:
            kernel = sketch.sketch_kernel(engine, k, sketch_seed)
        else:
            kernel = engine.run()
        if samples:
            exact.verify(kernel, model, inputs, engine.names, engine.select, samples, engine.full)
    return kernel


def _verify_samples(verify: bool | int) -> int:
    if verify is True:
        return 3
    if verify is False:
        return 0
    return check_int("verify", verify, 2, "Use verify=True (3 samples) or a sample count ≥ 2.")


def _sketch_dim(method: str, sketch_dim: int | None) -> int | None:
    """k for the sketch, None for the exact methods (a sketch_dim there is refused)."""
    if method != "sketch":
        if sketch_dim is not None:
            raise ValueError(
                f"Invalid sketch_dim: {sketch_dim!r} with method={method!r}; it only applies "
                "to method='sketch'. Fix: pass method='sketch' or drop sketch_dim."
            )
        return None
    if sketch_dim is None:
        return DEFAULT_SKETCH_DIM
    return check_int("sketch_dim", sketch_dim, 1, "Fix: e.g. sketch_dim=128.")


def _select(model: nn.Module, params: ParamFilter) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if params is None:
        chosen = named
    elif callable(params):
        chosen = {n: p for n, p in named.items() if params(n, p)}
    else:
        unknown = [n for n in params if n not in named]
        if unknown or isinstance(params, str):
            raise ValueError(
                f"Invalid params: {params!r}; names {unknown} are not parameters of the model. "
                f"Fix: choose from {list(named)[:8]}..."
            )
        chosen = {n: named[n] for n in params}
    chosen = {n: p for n, p in chosen.items() if p.requires_grad}
    if not chosen:
        raise ValueError(
            f"Invalid params: {params!r}; it selects no trainable parameter. "
            "Fix: select parameters with requires_grad=True."
        )
    hooked = [n for n, p in chosen.items() if p._backward_hooks]
    if hooked:
        warnings.warn(
            f"Parameters {hooked} have gradient hooks (Tensor.register_hook). The kernel is "
            "J Jᵀ of the forward's true derivatives and ignores them, while training applies "
            "them: the kernel is not the one that drives training through these parameters.",
            stacklevel=3,
        )
    return chosen


def _refuse_coupling(model: nn.Module, train_mode: bool) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            raise ValueError(
                f"Invalid model: BatchNorm module {name!r} has track_running_stats=False, so it "
                "normalises over the batch in every mode: samples are coupled and the "
                "per-sample NTK is undefined. Fix: track running statistics, or use a "
                "per-sample normalisation (LayerNorm, GroupNorm)."
            )
        if not train_mode:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"Invalid train_mode: True with BatchNorm module {name!r}; in training mode it "
                "normalises over the batch, so samples are coupled and the per-sample NTK is "
                "undefined. Fix: use train_mode=False (eval mode, running statistics)."
            )
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ValueError(
                f"Invalid train_mode: True with Dropout module {name!r} (p={m.p}); the NTK of a "
                "random function is undefined. Fix: use train_mode=False."
            )


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Compiled modules run their original eager code, so every op is seen (torch >= 2.6).
    Older torch: the missing-cotangent check sends traced layers to the exact path."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance else contextlib.nullcontext()


@contextlib.contextmanager
def _no_fastpath() -> Iterator[None]:
    """Keep ``nn.MultiheadAttention`` on ``F.multi_head_attention_forward`` (no fused kernels)."""
    flag = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(flag)


class _Engine:
    """One kernel request: probe, plan, structured pass, jacobian pass."""

    def __init__(
        self, model: nn.Module, selected: dict[str, nn.Parameter], inputs: torch.Tensor,
        output: Output, method: str, dtype: torch.dtype | None, budget: int,
    ) -> None:
        self.model, self.output, self.method, self.budget = model, output, method, budget
        cast = (lambda t: t.to(dtype) if t.is_floating_point() else t) if dtype else (lambda t: t)
        self.x = cast(inputs)
        self.N = inputs.shape[0]
        # Detached (cast) views: the user's parameters and their .grad are never touched; the
        # probe replaces those the forward writes into with copies.
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
        if callable(self.output):
            out = self.output(out)
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
        if isinstance(self.output, int):
            if not -flat.shape[1] <= self.output < flat.shape[1]:
                raise ValueError(
                    f"Invalid output: {self.output!r}; the model has {flat.shape[1]} output "
                    "components per sample. Fix: pick an index in range."
                )
            return flat[:, self.output : self.output + 1 or None]
        return flat

    def _forward(self, x: torch.Tensor, leaves: dict[str, torch.Tensor]) -> Any:
        recorder = rules.UseRecorder({id(t): n for n, t in leaves.items()}, self.protect,
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
        with torch.no_grad():
            for n, pristine in self.written.items():
                self.base[n].copy_(pristine)
        out = functional_call(self.model, self.base | params, (x.clone(),))
        return self.select(out, x.shape[0])

    # -------------------------------------------------------------------------------- plan
    def _leaves(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return {n: self.base[n].clone().requires_grad_(True) for n in names}

    def _probe(self, leaves: dict[str, torch.Tensor]) -> tuple[rules.UseRecorder, torch.Tensor]:
        """Sample 0 alone: which calls touch each parameter, and which outputs the model
        overwrites in place (those are copied from now on). Refuses random forwards."""
        self.protect: frozenset[int] = frozenset()
        self.written: dict[str, torch.Tensor] = {}
        views = self.base  # the leaves stand in for the selected parameters: copy the rest
        self.base = {n: t if n in leaves else t.clone() for n, t in views.items()}
        before = guards.rng_states(self.x.device)
        recorder, f1 = self._forward(self.x[:1], leaves)
        if recorder.overwritten():
            self.protect = recorder.overwritten()
            recorder, f1 = self._forward(self.x[:1], leaves)
        guards.refuse_randomness(before, self.x.device, recorder.functions)
        # Tensors the forward writes into (Embedding(max_norm=...) rows, spectral-norm power
        # iterations in training mode) stay private copies, reset before every forward so
        # that each computes the same function; the others go back to views.
        self.written = {n: views[n].clone() for n, c in self.base.items()
                        if n not in leaves and c._version}
        self.base = {n: c if n in self.written else views[n] for n, c in self.base.items()}
        return recorder, f1

    def _rules_for(self, recorder: rules.UseRecorder, f1: torch.Tensor,
                   leaves: dict[str, torch.Tensor]) -> dict[str, list[rules.Use]]:
        """Parameters whose structured rule holds on the probe: recognised, batch-first calls
        that are the parameter's only route to the outputs."""
        if self.method == "jacobian":
            return {}
        found = {n: us for n, us in recorder.uses.items() if rules.qualifies(us, 1)}
        outs = {id(u.out): u.out for us in found.values() for u in us if u.out is not None}
        delta = self._cotangents(f1, outs, retain=True)
        found = {n: us for n, us in found.items() if all(id(u.out) in delta for u in us)}
        hidden = guards.hidden_route(f1, {n: leaves[n] for n in found},
                                     lambda n: self._chunk_term("psg", found[n], delta))
        found = {n: us for n, us in found.items() if n not in hidden}
        return {n: found[n] for n in self._owned_rows(found, leaves)}

    def _owned_rows(self, found: dict[str, list[rules.Use]],
                    leaves: dict[str, torch.Tensor]) -> list[str]:
        """Names whose calls, on up to 8 samples spread over the batch, see one row per sample
        in sample order (:func:`guards.foreign_rows`). A model that reorders samples by their
        values passes only if those samples are already in its order (1 in 8! for random
        keys); ``verify=True`` checks independently."""
        k = min(self.N, 8)
        if k < 2 or not found:
            return list(found)
        idx = torch.linspace(0, self.N - 1, k, device=self.x.device).round().long()
        recorder, f = self._forward(self.x[idx], leaves)
        uses = {n: recorder.uses[n] for n in found}
        ok = [n for n, us in uses.items() if len(us) == len(found[n]) and rules.qualifies(us, k)]
        outs = {id(u.out): u.out for n in ok for u in uses[n] if u.out is not None}
        foreign = guards.foreign_rows(f, outs)
        return [n for n in ok if not any(id(u.out) in foreign for u in uses[n])]

    def run(self) -> torch.Tensor:
        leaves = self._leaves(self.names)
        recorder, f1 = self._probe(leaves)
        self.C = f1.shape[1]
        N, C = self.N, self.C
        shape = (N, N, C, C) if self.full else (N, N)
        kernel_bytes = N * N * (C * C if self.full else 1) * self.isz
        self.alone = f1[0].detach()
        structured = self._rules_for(recorder, f1, leaves)
        plan = {n: self._form(us) for n, us in structured.items()}
        plan = {n: f for n, f in plan.items()  # tied weights: per-sample form only if it fits
                if not rules.tied(structured[n]) or f[1] <= self.budget // 2}
        stored = sum(cost[1] for cost in plan.values())
        fallback = [n for n in self.names if n not in plan]
        jac_min = max((4 * C * self.base[n].numel() * self.isz for n in fallback), default=0)
        act = (2 + 2 * C) * max(recorder.out_bytes, 1)  # one sample's graph and cotangents
        need = kernel_bytes + stored + act + jac_min
        if need > self.budget:
            raise MemoryBudgetError(
                f"Invalid memory_budget: {self.budget!r} bytes; this request needs at least "
                f"{need} (kernel {kernel_bytes}, stored layer terms {stored}, largest jacobian "
                f"block {jac_min}). Fix: raise memory_budget, use fewer samples, output='trace' "
                "or a params subset."
            )
        self.free = self.budget - kernel_bytes - stored
        K = torch.zeros(shape, dtype=self.dtype, device=self.x.device)
        if plan:
            fallback += self._structured(K, plan, leaves, recorder, act)
        else:  # no chunked pass will compare sample 0 alone and in company: do it here
            with torch.no_grad():
                guards.refuse_coupling(self.alone, self.call(leaves, self.x[: min(N, 4)])[0])
        if fallback:
            vmap_ok = not recorder.functions & exact.VMAP_UNSAFE
            rows = exact.PerSampleJacobian(self.call, self.base, self.x, C, vmap_ok)
            names = sorted(fallback, key=self.names.index)
            sizes = {n: C * self.base[n].numel() * self.isz for n in names}
            exact.contract(K, rows, sizes, self.free, act, self.full)
        return K

    def _form(self, uses: list[rules.Use]) -> tuple[str, int]:
        """("gram" | "psg", bytes stored for all N) for one parameter, by the cost model."""
        N, C, isz = self.N, self.C, self.isz
        dims = [rules.row_count_and_width(u) for u in uses]
        R, d_in, d_out = sum(d[0] for d in dims), dims[0][1], dims[0][2]
        if uses[0].role == "bias" or uses[0].kind == "layer_norm":
            return "psg", N * C * d_out * isz
        c2 = C if self.full else 1
        gram = N * N * R * R * (d_in + C * c2 * d_out)
        psg = C * N * R * d_in * d_out + C * c2 * N * N * d_in * d_out
        psg_bytes = N * C * d_in * d_out * isz
        gram_first = self.method == "structured" or gram <= psg or psg_bytes > self.budget // 2
        if rules.gram_ok(uses) and gram_first:
            width = 1 if uses[0].kind == "embedding" else d_in
            return "gram", N * R * (width + C * d_out) * isz
        return "psg", psg_bytes

    # -------------------------------------------------------------------- structured pass
    def _structured(
        self, K: torch.Tensor, plan: dict[str, tuple[str, int]], leaves: dict[str, torch.Tensor],
        recorder: rules.UseRecorder, act: int,
    ) -> list[str]:
        """Accumulate the structured terms into K; return the names demoted to the jacobian.

        The probe forward ran sample 0 alone; this pass runs chunks of m >= 2 samples. A layer
        input whose leading dim follows the chunk size (1, then m) is batch-first, so each row
        belongs to one sample; anything else is demoted to the jacobian path (exact, slower).
        """
        store: dict[str, list[Any]] = {n: [] for n in plan}
        demoted: set[str] = set()
        counts = {n: len(recorder.uses[n]) for n in plan}
        m = max(2, self.free // 2 // act)
        for lo, hi in chunks(self.N, m):
            recorder, f = self._forward(self.x[lo:hi], leaves)
            if lo == 0:
                guards.refuse_coupling(self.alone, f[0].detach())
            live = [n for n in plan if n not in demoted]
            for n in live:
                us = recorder.uses[n]
                if len(us) != counts[n] or not rules.qualifies(us, hi - lo):
                    demoted.add(n)
            live = [n for n in live if n not in demoted]
            outs = {id(u.out): u.out for n in live for u in recorder.uses[n] if u.out is not None}
            delta = self._cotangents(f, outs)
            for n in live:
                if all(id(u.out) in delta for u in recorder.uses[n]):
                    store[n].append(self._chunk_term(plan[n][0], recorder.uses[n], delta))
                else:  # a captured output the graph never reached (e.g. a traced copy)
                    demoted.add(n)
        merged = self._merge_biases(plan, demoted, recorder)
        for n in plan:
            if n in demoted or n in merged.values():
                continue
            if plan[n][0] == "psg":
                G = store[n][0] if len(store[n]) == 1 else torch.cat(store[n])
                store[n] = []
                accumulate(K, G, self.full)
            else:
                xs, ds = zip(*store[n], strict=True)
                store[n] = []
                X = xs[0] if len(xs) == 1 else torch.cat(xs)
                D = ds[0] if len(ds) == 1 else torch.cat(ds, dim=1)
                _gram(K, X, D, recorder.uses[n][0].kind, plus_one=n in merged, free=self.free,
                      full=self.full)
        return sorted(demoted)

    def _cotangents(self, f: torch.Tensor, outs: dict[int, torch.Tensor],
                    retain: bool = False) -> dict[int, Any]:
        """``∂f_c/∂y`` stacked over components, (C, *y.shape), for each captured output ``y``
        that ``f`` depends on; outputs with no cotangent for any component are left out."""
        outs = {k: y for k, y in outs.items() if y.requires_grad}  # else: used under no_grad
        ys = list(outs.values())
        if not ys:
            return {}
        per_c = [torch.autograd.grad(f[:, c].sum(), ys, retain_graph=retain or c < self.C - 1,
                                     allow_unused=True) for c in range(self.C)]
        delta = {}
        for i, (k, y) in enumerate(outs.items()):
            gs = [g[i] for g in per_c]
            if all(g is None for g in gs):
                continue
            delta[k] = gs[0].unsqueeze(0) if self.C == 1 else torch.stack(  # a view when C = 1
                [torch.zeros_like(y) if g is None else g for g in gs])
        return delta

    def _merge_biases(
        self, plan: dict[str, tuple[str, int]], demoted: set[str], recorder: rules.UseRecorder,
    ) -> dict[str, str]:
        """{weight: bias} for Gram-form weights whose bias is used in exactly the same calls:
        ``Θ_W + Θ_b = Σ_{s,t} (x_is·x_jt + 1)(δ_is·δ_jt)``, one Gram instead of two."""
        live = [n for n in plan if n not in demoted]
        outs = {n: [id(u.out) for u in recorder.uses[n]] for n in live}
        merged: dict[str, str] = {}
        for w in live:
            if plan[w][0] != "gram" or recorder.uses[w][0].kind == "embedding":
                continue
            for b in live:
                if recorder.uses[b][0].role == "bias" and outs[b] == outs[w] \
                        and b not in merged.values():
                    merged[w] = b
                    break
        return merged

    def _chunk_term(self, form: str, uses: list[rules.Use], delta: dict[int, torch.Tensor]) -> Any:
        """Per chunk: per-sample gradients (n, C, P) for "psg", or rows (X, Δ) for "gram"."""
        if form == "gram":
            terms = [rules.rows(u, delta[id(u.out)]) for u in uses]
            return torch.cat([x for x, _ in terms], 1), torch.cat([d for _, d in terms], 2)
        G = rules.per_sample_grad(uses[0], delta[id(uses[0].out)])
        for u in uses[1:]:  # a layer called several times: gradients add (cross terms exact)
            G = G + rules.per_sample_grad(u, delta[id(u.out)])
        return G


def _gram(
    K: torch.Tensor, X: torch.Tensor, D: torch.Tensor, kind: str | None, *, plus_one: bool,
    free: int, full: bool,
) -> None:
    """K += Σ_{s,t} (x_is·x_jt [+ 1])(δ_is·δ_jt), in blocks of b samples that fit ``free``
    bytes (rule in the module doc; ``plus_one`` adds the kernel of the layer's bias)."""
    C, N, R, d_out = D.shape
    Dr = D.permute(1, 2, 0, 3).reshape(N * R, C, d_out)
    emb = kind == "embedding"
    Xr = X.reshape(N * R) if emb else X.reshape(N * R, -1)
    per_sample = R * N * R * (2 + (C * C if full else 1)) * D.element_size()
    size = free // 2 // max(per_sample, 1)
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
