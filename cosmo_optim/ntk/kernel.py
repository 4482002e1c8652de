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
  directions of 8 pilot samples, one side of ≤ 12k entries kept exact;
  :mod:`cosmo_optim.ntk.sketch`): time O(N R k (d_in + d_out + d_kept)) per weight on top of
  one forward and C backwards (and those of the 8 pilot samples), plus O(C² N² F) for the
  product over F ≈ Σ_weights k·d_kept features; memory O(N C F). Error model in
  docs/performance.md.

``distributed=True`` (``torch.distributed`` initialised, every rank calling with the same probe
batch) splits the samples across ranks: each computes the features of its shard (exact
per-sample gradients, or sketches), the shards are all-gathered in blocks of parameters, and
every rank returns the same N×N kernel (:mod:`cosmo_optim.ntk.distributed`).

Never silently wrong: a rule is used for a parameter only while its assumptions hold, checked at
run time in every chunk. Every recognised call is batch-first and in one role; where the
one-sample scout sees an in-place op (``ReLU(inplace=True)``, ``h += x``, a hook) overwrite a
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

from cosmo_optim._common import (
    cast_copy,
    check_int,
    parse_bytes,
    preserved,
    restore_python_state,
    training,
    unwrap_parallel,
)
from cosmo_optim.ntk import distributed as distributed_ntk
from cosmo_optim.ntk import per_sample as exact
from cosmo_optim.ntk import sketch
from cosmo_optim.ntk.engine import Engine, Output
from cosmo_optim.ntk.plan import default_budget

__all__ = ["DEFAULT_SKETCH_DIM", "METHODS", "ParamFilter", "empirical_ntk"]

ParamFilter = Sequence[str] | Callable[[str, nn.Parameter], bool] | None

METHODS = ("auto", "structured", "jacobian", "sketch")
DEFAULT_SKETCH_DIM = 128  # k: each weight's per-sample gradient sketched to k × d_kept numbers

_OUTPUTS = ("trace", "full")


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
    explain: bool = False,
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
            int (one flattened component), or a callable from the model's output to ``(N, ...)``
            (traced), e.g. ``lambda out: out.logits`` for a dict, tuple or dataclass output.
        method: one of :data:`METHODS` (cost of each in the module docstring).
        dtype: compute in this dtype (e.g. ``torch.float64``); the model is not modified.
        memory_budget: bytes the engine may hold at once (a number, or ``"1GB"``,
            ``"512MiB"``); default a quarter of the free memory on the probe batch's device,
            within [256 MiB, 8 GiB] (:mod:`cosmo_optim.ntk.plan`). The engine plans under it
            (streams, chunks, passes) and refuses only when one sample's pass cannot fit.
        train_mode: compute in training mode (default eval); refused for BatchNorm, dropout.
        sketch_dim: ``k`` for ``method="sketch"`` (default :data:`DEFAULT_SKETCH_DIM`); the
            relative error falls like ``1/sqrt(k)`` (docs/performance.md). Only with "sketch".
        sketch_seed: seed of the sketch's projections (a private generator: reproducible).
        distributed: split the probe batch's samples across the ranks of the initialised
            ``torch.distributed`` group; every rank must call with the same ``inputs``.
        verify: recompute the entries of ``verify`` samples (``True``: 3) from the user's
            module with plain autograd; raise if they disagree beyond the dtype's tolerance.
        explain: print the plan (chunks, passes, each parameter's form and bytes); also
            logged at DEBUG on the ``cosmo_optim.ntk`` logger.

    Returns:
        The kernel on ``inputs.device``: ``(N, N)``, or ``(N, N, C, C)`` for ``"full"``. It
        is exact for every method but ``"sketch"``, which returns an unbiased estimate.

    Raises:
        ValueError: an invalid argument, an output that needs a selector, or a model whose
            per-sample kernel is undefined (coupled samples, a random forward).
        MemoryBudgetError: (a ValueError) the request does not fit ``memory_budget``; raised
            before anything large is allocated.
        RuntimeError: ``verify`` found an entry off by more than the tolerance.

    Each rule's assumptions are proven at run time (module docstring); compiled modules run
    their eager code. The model's modes, parameters, buffers, ``.grad`` fields and the torch,
    NumPy and Python RNG states are unchanged.

    >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> empirical_ntk(net, torch.randn(5, 3)).shape
    torch.Size([5, 5])
    """
    budget, samples, k = _checked(inputs, output, method, memory_budget, verify,
                                 sketch_dim, train_mode)
    model, selected = _admitted(model, params, inputs, dtype, train_mode)
    with preserved(model, inputs.device), training(model, train_mode), _no_fastpath(), \
            _eager():
        twin, chosen = cast_copy(model, selected, dtype)
        engine = Engine(twin, chosen, inputs, output, method, dtype, budget)
        with _named_torch_errors(cast=dtype is not None and twin is model):
            kernel = _executed(engine, k, sketch_seed, distributed, explain)
        restore_python_state(engine.python_state)  # what the last forward counted or cached
        if samples:
            with _restored(model, set(engine.written)):  # a forward that writes its weights
                exact.verify(kernel, model, inputs, engine.names, engine.select, samples,
                             engine.full)
    return kernel


def _admitted(
    model: nn.Module, params: ParamFilter, inputs: torch.Tensor, dtype: torch.dtype | None,
    train_mode: bool,
) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """The module under any DDP/DataParallel wrapper and its selected parameters, or an
    error for a model the kernel is undefined or unreachable on (training-mode coupling,
    TorchScript, complex or integer weights)."""
    model = unwrap_parallel(model)
    selected = _select(model, params)
    _refuse_coupling(model, train_mode)
    _refuse_scripted(model)
    _refuse_dtypes(selected, inputs, dtype)
    return model, selected


def _executed(engine: Engine, k: int | None, seed: int, distributed: bool,
              explain: bool) -> torch.Tensor:
    """The kernel from the executor the request names: distributed, sketch or exact."""
    if distributed:
        return distributed_ntk.kernel(engine, k, seed)
    if k is not None:
        return sketch.sketch_kernel(engine, k, seed)
    return engine.run(explain)


def _checked(inputs: torch.Tensor, output: Output, method: str,
             memory_budget: int | float | str | None, verify: bool | int,
             sketch_dim: int | None, train_mode: bool) -> tuple[int, int, int | None]:
    """The budget in bytes, the samples to verify and the sketch dimension, or a
    ValueError naming the invalid argument and the fix."""
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
    budget = default_budget(inputs.device) if memory_budget is None else parse_bytes(
        "memory_budget", memory_budget)
    samples = _verify_samples(verify)
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"Invalid inputs shape: {tuple(inputs.shape)}; it needs N >= 1 samples.")
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
    return budget, samples, k


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
    if params is not None and not callable(params) and not isinstance(params, str):
        params = list(params)  # a generator is read once
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


def _refuse_dtypes(selected: dict[str, nn.Parameter], inputs: torch.Tensor,
                   dtype: torch.dtype | None) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(
            f"Invalid dtype: {dtype!r}; the kernel is computed in a real floating dtype. "
            "Fix: dtype=torch.float64 (or float32), or dtype=None for the model's own."
        )
    bad = [n for n, p in selected.items() if p.is_complex() or p.is_meta]
    if bad or inputs.is_meta:
        what = "on the meta device (no values)" if inputs.is_meta or selected[bad[0]].is_meta \
            else "complex"
        raise ValueError(
            f"Invalid model: parameters {bad[:4] or list(selected)[:4]} or inputs are {what}; "
            "the kernel J Jᵀ is defined here for real parameters with values. Fix: "
            + ("materialise the model (to_empty and load its weights) and the inputs first."
               if what != "complex" else "write complex weights as real and imaginary parts.")
        )


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
                "passes). Fix: checkpoint(..., use_reentrant=False)."
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


def _refuse_scripted(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            raise ValueError(
                f"Invalid model: module {name or 'model'!r} is a torch.jit.script/trace module; "
                "its compiled forward cannot run on substituted parameters "
                "(torch.func.functional_call), which the kernel differentiates. Fix: pass the "
                "eager nn.Module you scripted (or torch.compile it instead)."
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
