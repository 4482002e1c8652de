"""Empirical neural tangent kernel of any ``nn.Module`` (docs/theory.md T4, T7).

``Θ(x, x') = Σ_p ∂f(x)/∂θ_p · ∂f(x')/∂θ_p = J Jᵀ`` on a probe batch, computed without ever
holding the N×P Jacobian: layers with a structured rule (``linear``, ``conv1d``, ``conv2d``,
``embedding``, ``layer_norm`` affine parameters, eval-mode ``batch_norm``, parameters broadcast
over the samples such as a class token or a position embedding, and the projections of
self-attention ``nn.MultiheadAttention``, re-dispatched as ``linear`` calls; see
:mod:`cosmo_optim.ntk.rules`)
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
* ``"sketch"`` — an unbiased estimate of the trace kernel from k = ``sketch_dim`` random
  combinations of the C output components (:mod:`cosmo_optim.ntk.sketch`): the exact engine on
  the combined outputs, so one forward and k backward passes instead of C; exact for C ≤ k.
  Relative standard deviation of an entry at most ``√(2/k)``, less as the component gradients
  spread (docs/performance.md). Worth it where C is large (classes, a vocabulary).

``distributed=True`` (``torch.distributed`` initialised, every rank calling with the same probe
batch) splits the samples across ranks: each computes the features of its shard (exact
per-sample gradients), the shards are all-gathered in blocks of parameters, and
every rank returns the same N×N kernel (:mod:`cosmo_optim.ntk.distributed`). A model sharded
by FSDP (FSDP2 ``fully_shard``, FSDP1 with ``use_orig_params=True``) has its parameters
gathered as FSDP's own forward gathers them, every rank calling (:mod:`cosmo_optim.ntk.sharded`).

Whatever the caller's context: the engine computes with gradients on (under ``torch.no_grad()``
or ``torch.inference_mode()`` too) and its own arithmetic outside autocast; the model's
forward runs as the caller runs it, under the caller's ``torch.autocast`` if any
(:mod:`cosmo_optim.ntk.modes`). Kernels of bfloat16/float16 forwards (weights, or autocast
around the call or inside forward) are accumulated and returned in float32, exact to the
low-precision tolerance (2e-2 relative) of the same forward's brute-force kernel.

Never silently wrong: a rule is used for a parameter only while its assumptions hold, checked at
run time in every chunk. Every recognised call is batch-first and in one role; where the
one-sample scout sees an in-place op (``ReLU(inplace=True)``, ``h += x``, a hook) overwrite a
captured output, the model gets a copy of it, and version counters prove every captured input
and output unchanged;
every captured output must receive a cotangent; call options a rule does not model
(``max_norm``, ``scale_grad_by_freq``) and parametrised weights are not recognised calls. A
parameter that fails any of these takes the exact jacobian path, whose ``vmap`` rows are checked
against the one-sample loop once per chunk size. A reentrant gradient checkpoint that hides
parameters from ``torch.autograd.grad`` is refused; a model whose own forward takes a fused
fast path (``nn.TransformerEncoder`` in eval) must compute the same function as the
differentiable path, or is refused. ``verify=True`` recomputes a few entries from the user's
module by plain autograd, a path that shares nothing with the kernel's (docs/performance.md
gives the cost).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from cosmo_optim._common import (
    cast_copy,
    check_int,
    parse_bytes,
    preserved,
    restore_python_state,
    training,
)
from cosmo_optim.ntk import distributed as distributed_ntk
from cosmo_optim.ntk import forms, modes, sharded
from cosmo_optim.ntk import per_sample as exact
from cosmo_optim.ntk.admission import Admitted, ParamFilter, admitted
from cosmo_optim.ntk.engine import exact_kernel
from cosmo_optim.ntk.fastpath import no_fastpath, same_function
from cosmo_optim.ntk.forward import Forward, scout
from cosmo_optim.ntk.inputs import ModelInputs
from cosmo_optim.ntk.outputs import Output
from cosmo_optim.ntk.plan import default_budget
from cosmo_optim.ntk.sketch import DEFAULT_SKETCH_DIM, combinations

__all__ = ["DEFAULT_SKETCH_DIM", "METHODS", "ParamFilter", "empirical_ntk"]
logger = logging.getLogger("cosmo_optim.ntk")


class _Method(NamedTuple):
    """What a ``method=`` does (the module docstring gives each one's cost)."""

    rules: bool  # structured rules where they hold (else the per-sample Jacobian throughout)
    prefer: tuple[type[forms.Form], ...]  # forms taken wherever they apply, in this order
    sketch: bool  # random combinations of the output components (:mod:`.sketch`)


_METHODS = {
    "auto": _Method(True, (), False),
    "structured": _Method(True, (forms.Gram, forms.Tied), False),
    "jacobian": _Method(False, (), False),
    "sketch": _Method(True, (), True),
}
METHODS = tuple(_METHODS)
_OUTPUTS = ("trace", "full")


def empirical_ntk(
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...] | dict[str, Any] | ModelInputs,
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
    explain: bool = False,
) -> torch.Tensor:
    """Empirical NTK ``Θ = J Jᵀ`` of ``model`` on the probe batch ``inputs`` (docs/theory.md T4):
    the kernel of function-space dynamics ``f̈ + 3H ḟ = −Θ ∂L/∂f`` (T4), whose eigenmodes are
    the mean field and perturbations (T7, :func:`cosmo_optim.ntk_eigen`).

    Args:
        model: any module mapping N samples to ``(N, ...)`` outputs, samples independent.
        inputs: the probe batch as the model takes it: a tensor, a tuple of positional
            arguments, a dict of keyword arguments, or a :class:`cosmo_optim.ntk.ModelInputs`
            (batch dims, shared arguments). Tensors with N rows on dim 0 are split per sample;
            others (a scalar timestep, a mask of another length) go to every call as they are.
        params: ``None`` (all trainable parameters), a list of names, or a predicate
            ``(name, param) -> bool``; parameters with ``requires_grad=False`` never count.
        output: ``"trace"`` (N×N, summed over output components), ``"full"`` (N×N×C×C), an
            int (one flattened component), or a callable from the model's output to ``(N, ...)``
            (traced), e.g. ``lambda out: out.logits``; a callable ``(out, index)`` also gets
            the samples' positions in ``inputs`` (the engine runs subsets), for per-sample
            data: ``lambda out, index: out.gather(1, labels[index, None])``.
        method: one of :data:`METHODS` (cost of each in the module docstring).
        dtype: compute in this dtype (e.g. ``torch.float64``); the model is not modified.
            Default: the model's own, accumulated in at least float32.
        memory_budget: bytes the engine may hold at once (a number, or ``"1GB"``); default a
            quarter of the free memory on the batch's device, within [256 MiB, 8 GiB]
            (:mod:`cosmo_optim.ntk.plan`), planned under (streams, chunks, passes); refused
            only when one sample's pass cannot fit.
        train_mode: compute in training mode (default eval); refused for BatchNorm, dropout.
        sketch_dim: ``k`` for ``method="sketch"``: random combinations of the output
            components (default :data:`DEFAULT_SKETCH_DIM`); relative error ``≲ √(2/k)``.
        sketch_seed: seed of the sketch's combinations (a private generator: reproducible).
        distributed: split the samples across the ranks of the initialised
            ``torch.distributed`` group; every rank must call with the same ``inputs``.
        verify: recompute the entries of ``verify`` samples (``True``: 3) from the user's
            module as it is, with plain autograd; raise if they disagree beyond the dtype's
            tolerance.
        explain: log the plan (chunks, passes, each parameter's form and bytes) at INFO on the
            ``cosmo_optim.ntk`` logger (at DEBUG on every call).

    Returns:
        The kernel on the probe batch's device: ``(N, N)``, or ``(N, N, C, C)`` for
        ``"full"``; exact for every method but ``"sketch"``, an unbiased estimate of the
        trace kernel (exact when C ≤ ``sketch_dim``).

    Raises:
        ValueError: an invalid argument, an output that needs a selector, a model whose
            per-sample kernel is undefined (coupled samples, a random forward), or
            ``output="full"`` with ``method="sketch"`` and fewer combinations than components.
        MemoryBudgetError: (a ValueError) the request does not fit ``memory_budget``; raised
            before anything large is allocated.
        RuntimeError: ``verify`` found an entry off by more than the tolerance.

    Each rule's assumptions are proven at run time; compiled modules run their eager code. The
    model's modes, parameters, buffers, ``.grad``, module attributes (caches) and the torch,
    NumPy and Python RNG states are unchanged; every forward starts from the state at the call.

    >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> empirical_ntk(net, torch.randn(5, 3)).shape
    torch.Size([5, 5])
    """
    x = ModelInputs(inputs)
    request = _checked(x, output, method, memory_budget, verify, sketch_dim, train_mode,
                       sketch_seed, distributed, explain)
    return _kernel(model, x, params, dtype, request)


class _Request(NamedTuple):
    """One call's checked options (:func:`_checked`)."""

    output: Output
    how: _Method
    budget: int  # bytes
    samples: int  # to verify (0: none)
    k: int | None  # the sketch's combinations (None: exact)
    seed: int
    train_mode: bool
    distributed: bool
    explain: bool

    @property
    def full(self) -> bool:
        return self.output == "full"


def _kernel(model: nn.Module, x: ModelInputs, params: ParamFilter, dtype: torch.dtype | None,
            r: _Request) -> torch.Tensor:
    """The kernel of the admitted model, its states preserved, then the checks that run the
    user's own module (its fast paths, ``verify``)."""
    autocast = modes.Autocast(x.device)  # the caller's: the model's forwards run under it
    with modes.engine_modes(x.device), admitted(model, params, x, dtype, r.train_mode) as req:
        if any(t.is_inference() for t in x.tensors()):
            x = x.clone()  # made under inference_mode: autograd cannot save them
        if req.input_dtype is not None and dtype is None:
            x = x.to(dtype=req.input_dtype)  # as FSDP's mixed precision casts its inputs
        with preserved(req.module, x.device), training(req.module, r.train_mode):
            twin, chosen = (req.module, req.selected) if req.values else cast_copy(
                req.module, req.selected, dtype)
            combine = _combine(r.k, r.seed, r.full) if r.how.sketch else None

            def scouted() -> Forward:
                return scout(twin, chosen, x, r.output, dtype=dtype, autocast=autocast,
                             values=req.values, structured=r.how.rules, combine=combine)

            cast_inside = dtype is not None and twin is req.module
            with no_fastpath(), _eager(), _named_torch_errors(cast_inside):
                fwd, kernel = _executed(scouted, req, x, r)
            restore_python_state(fwd.state)  # what the last forward counted or cached
            with sharded.materialised(req.module, req.values), \
                    _restored(req.module, set(fwd.written)):  # a forward writing its weights
                same_function(fwd, req.module, autocast)
                if r.samples:
                    exact.verify(kernel, req.module, x, fwd.names, fwd.select, r.samples,
                                 r.full, fwd.precision, autocast)
    return kernel


def _executed(scouted: Callable[[], Forward], req: Admitted, x: ModelInputs,
              r: _Request) -> tuple[Forward, torch.Tensor]:
    """The scout's forward and the kernel from the executor the request names."""
    if r.distributed:
        model = dict(req.module.named_parameters()) | req.values
        distributed_ntk.check_same_model(x, [*model.values(), *req.module.buffers()])
        fwd = distributed_ntk.agreed(scouted)
        return fwd, distributed_ntk.kernel(fwd, r.budget, r.full)
    fwd = scouted()
    result = exact_kernel(fwd, r.budget, full=r.full, prefer=r.how.prefer)
    if r.explain:
        logger.info("empirical_ntk plan:\n%s", result.describe())
    return fwd, result.kernel


Combine = Callable[[int, torch.Tensor], torch.Tensor | None]


def _combine(k: int | None, seed: int, full: bool) -> Combine:
    """The sketch's ``combine(C, f1)`` for the scout: the random combinations of C components,
    or a ValueError for the full kernel, which the combinations do not estimate."""
    assert k is not None

    def combine(C: int, f1: torch.Tensor) -> torch.Tensor | None:
        R = combinations(C, k, seed)
        if R is not None and full:
            raise ValueError(
                f"Invalid output: 'full' with method='sketch' and sketch_dim={k} < C = {C} "
                "output components; the sketch estimates the trace kernel from random "
                "combinations of the components, not each pair of them. Fix: "
                "output='trace', or method='auto' for the exact full kernel (C backward "
                f"passes), or sketch_dim >= {C} (then exact)."
            )
        return None if R is None else R.to(device=f1.device)
    return combine


def _checked(inputs: ModelInputs, output: Output, method: str,
             memory_budget: int | float | str | None, verify: bool | int,
             sketch_dim: int | None, train_mode: bool, seed: int, distributed: bool,
             explain: bool) -> _Request:
    """The call's options checked (the budget in bytes, the samples to verify, the sketch
    dimension), or a ValueError naming the invalid argument and the fix."""
    if method not in METHODS:
        raise ValueError(f'Invalid method "{method}". Must be one of {list(METHODS)}')
    if isinstance(output, bool) or not (
            isinstance(output, int) or callable(output) or output in _OUTPUTS):
        raise ValueError(
            f"Invalid output: {output!r}; it must be 'trace', 'full', an int or a callable. "
            "Fix: pass output='trace' for the N×N kernel summed over output components."
        )
    budget = default_budget(inputs.device) if memory_budget is None else parse_bytes(
        "memory_budget", memory_budget)
    samples = _verify_samples(verify)
    k = _sketch_dim(method, sketch_dim)
    if not isinstance(train_mode, bool):
        raise ValueError(
            f"Invalid train_mode: {train_mode!r}; it must be True or False. Fix: "
            "train_mode=False (eval mode, the default) or train_mode=True."
        )
    if samples and k is not None:
        raise ValueError(
            f"Invalid verify: {verify!r} with method='sketch'; verify compares entries with the "
            "exact kernel, and the sketch is a random estimate of it. Fix: drop verify, or "
            "use an exact method."
        )
    return _Request(output, _METHODS[method], budget, samples, k, seed, train_mode,
                    distributed, explain)


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


@contextlib.contextmanager
def _named_torch_errors(cast: bool) -> Iterator[None]:
    """torch errors a model can trigger inside the engine, re-raised naming cause and fix."""
    try:
        yield
    except RuntimeError as error:
        text = str(error)
        if "use_reentrant=True" in text:
            raise ValueError(
                "Invalid model: it uses torch.utils.checkpoint(use_reentrant=True), which "
                "torch.autograd.grad cannot differentiate through (the kernel's backward "
                "passes). Fix: checkpoint(..., use_reentrant=False), i.e. for a Hugging Face "
                "model gradient_checkpointing_enable(gradient_checkpointing_kwargs="
                "{'use_reentrant': False}), or gradient_checkpointing_disable() for the call."
            ) from error
        if cast and ("dtype" in text or "scalar type" in text):
            raise ValueError(
                "Invalid dtype: the model cannot be deep-copied, so its weights were cast only "
                "inside forward, and code outside forward (such as the recompute of "
                "torch.utils.checkpoint in backward) ran on its own weights: "
                f"{text.splitlines()[0]}. Fix: cast the model yourself (model.double(), or a "
                "copy of it) and pass dtype=None."
            ) from error
        raise


@contextlib.contextmanager
def _restored(model: nn.Module, names: set[str]) -> Iterator[None]:
    """Put back the values of the parameters and buffers ``names`` (those the forward writes
    into, e.g. Embedding(max_norm=...) rows) after running the user's own module."""
    tensors = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()] if n in names}
    saved = {n: t.detach().clone() for n, t in tensors.items()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in tensors.items():
                t.copy_(saved[n])


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Compiled modules run their original eager code, so every op is seen (torch >= 2.6).

    Only where the compiler stack is loaded: a module is compiled only after
    ``torch._dynamo`` was imported, and importing it (~800 modules, about a second of CPU)
    would otherwise be every first call's cost. Older torch: the missing-cotangent check
    sends traced layers to the exact path."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None or "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    return set_stance("force_eager")
