"""Which models and parameters a request admits, and the model as the engine runs it.

Private helper of :mod:`cosmo_optim.ntk`. :func:`admitted` takes the module out of DDP and
DataParallel wrappers, gathers a sharded model (:mod:`.sharded`), selects the parameters and
refuses, with the cause and a fix, models on which the per-sample kernel is undefined or
unreachable: batch statistics, dropout in training mode, TorchScript, complex, meta or
inference-mode weights, fake quantisation with live observers, DeepSpeed ZeRO-3.
:func:`coupling_causes` names what in a model can couple samples, for the message of a
coupling the run-time proof found.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn

from cosmo_optim._common import unwrap_parallel
from cosmo_optim.ntk import sharded
from cosmo_optim.ntk.inputs import ModelInputs

__all__ = ["Admitted", "ParamFilter", "admitted", "coupling_causes"]

ParamFilter = Sequence[str] | Callable[[str, nn.Parameter], bool] | None

_FSDP1_PREFIX = "_fsdp_wrapped_module."


class Admitted(NamedTuple):
    """A request's model as the engine runs it, its selected parameters, the full values of
    sharded ones, and the dtype a sharded model's mixed precision casts inputs to."""

    module: nn.Module
    selected: dict[str, nn.Parameter]
    values: dict[str, torch.Tensor]
    input_dtype: torch.dtype | None


@contextlib.contextmanager
def admitted(model: nn.Module, params: ParamFilter, inputs: ModelInputs,
             dtype: torch.dtype | None, train_mode: bool) -> Iterator[Admitted]:
    """The module under any DDP/DataParallel wrapper (FSDP's gathered for the call) and its
    selected parameters, or an error for a model the kernel is undefined or unreachable on
    (training-mode coupling, TorchScript, complex, meta or inference-mode weights, live
    quantisation observers, ZeRO-3)."""
    model = unwrap_parallel(model)
    sharded.refuse_zero3(model)
    _refuse_scripted(model)
    with sharded.unsharded(model) as found:
        selected = _select(found.module, params)
        _refuse_coupling(found.module, train_mode)
        _refuse_dtypes(selected, inputs, dtype)
        _refuse_inference(found.module)
        _refuse_live_observers(found.module)
        yield Admitted(found.module, selected, found.values, found.input_dtype)


def _refuse_inference(model: nn.Module) -> None:
    made = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_inference()]
    if made:
        raise ValueError(
            f"Invalid model: parameters or buffers {made[:4]} are inference tensors (made "
            "under torch.inference_mode), which autograd cannot differentiate or save. Fix: "
            "build or load the model outside torch.inference_mode (calling empirical_ntk "
            "inside it is fine), or replace them by clones made outside it."
        )


def _quantised(m: nn.Module) -> bool:
    """A module of torch.ao's quantised kernels (dynamic or static int8)."""
    return type(m).__module__.startswith("torch.ao.nn.quantized")


def coupling_causes(model: nn.Module) -> list[str]:
    """What in ``model`` can make a sample's output depend on the batch, each with its fix:
    quantisation with one activation range per batch, max_norm embeddings."""
    causes = []
    dynamic = [n for n, m in model.named_modules()
               if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    if dynamic:
        causes.append(
            f"modules {dynamic[:3]} are dynamically quantised (torch.ao quantize_dynamic): "
            "each call quantises its activations with one range over the whole batch. Fix: "
            "compute the kernel on the float model (before quantize_dynamic), or quantise "
            "activations statically (calibrated, fixed ranges)")
    renormed = [n for n, m in model.named_modules()
                if isinstance(m, nn.Embedding) and m.max_norm is not None]
    if renormed:
        causes.append(
            f"embeddings {renormed[:3]} have max_norm: each forward renormalises, in place, "
            "the rows of the batch's tokens, so a layer that reads the same weight (a tied "
            "output projection) sees rows renormalised for other samples. Fix: renormalise "
            "every row once before the call (with torch.no_grad(): torch.embedding_renorm_("
            "emb.weight, torch.arange(emb.num_embeddings), emb.max_norm, emb.norm_type)), "
            "so the forward's renormalisation changes nothing")
    return causes


def _refuse_live_observers(model: nn.Module) -> None:
    """Fake quantisation with a live observer (after ``prepare_qat``, in either mode) moves
    its range to every batch it sees: each output depends on the batch and the calls before."""
    live = [n for n, m in model.named_modules() if _live_observer(m)]
    if live:
        raise ValueError(
            f"Invalid model: modules {live[:3]}{'...' if len(live) > 3 else ''} fake-quantise "
            "with a live observer (e.g. after prepare_qat): every forward moves the "
            "quantisation range to the batch it sees, so a sample's output depends on its "
            "batch and on the calls before, and the per-sample NTK is undefined. Fix: freeze "
            "the ranges, model.apply(torch.ao.quantization.disable_observer), as after "
            "calibration; the kernel is then exact (with the straight-through derivative "
            "that training uses)."
        )


def _live_observer(m: nn.Module) -> bool:
    enabled = getattr(m, "observer_enabled", None)
    return isinstance(enabled, torch.Tensor) and bool(enabled.reshape(-1)[0]) and hasattr(
        m, "activation_post_process")


def _select(model: nn.Module, params: ParamFilter) -> dict[str, nn.Parameter]:
    """The trainable parameters ``params`` names or accepts (FSDP1's wrapper names accepted)."""
    named = dict(model.named_parameters())
    if params is not None and not callable(params) and not isinstance(params, str):
        params = [n.replace(_FSDP1_PREFIX, "") for n in params]  # a generator is read once
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
        packed = [n for n, m in model.named_modules() if _quantised(m)]
        raise ValueError(
            f"Invalid params: {params!r}; it selects no trainable parameter. "
            + (f"Modules {packed[:4]} are quantised: their int8 weights are packed, not "
               "parameters. " if packed else "")
            + "Fix: select parameters with requires_grad=True."
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


def _refuse_dtypes(selected: dict[str, nn.Parameter], inputs: ModelInputs,
                   dtype: torch.dtype | None) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(
            f"Invalid dtype: {dtype!r}; the kernel is computed in a real floating dtype. "
            "Fix: dtype=torch.float64 (or float32), or dtype=None for the model's own."
        )
    bad = [n for n, p in selected.items() if p.is_complex() or p.is_meta]
    meta = any(t.is_meta for t in inputs.tensors())
    if bad or meta:
        what = "on the meta device (no values)" if meta or selected[bad[0]].is_meta \
            else "complex"
        raise ValueError(
            f"Invalid model: parameters {bad[:4] or list(selected)[:4]} or inputs are {what}; "
            "the kernel J Jᵀ is defined here for real parameters with values. Fix: "
            + ("materialise the model (to_empty and load its weights) and the inputs first."
               if what != "complex" else "write complex weights as real and imaginary parts.")
        )



def _refuse_scripted(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            raise ValueError(
                f"Invalid model: module {name or 'model'!r} is a torch.jit.script/trace module; "
                "its compiled forward cannot run on substituted parameters "
                "(torch.func.functional_call), which the kernel differentiates. Fix: pass the "
                "eager nn.Module you scripted (or torch.compile it instead)."
            )
