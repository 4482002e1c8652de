"""One reading of a model: its forward and NTK on the probe batch, then the read-out.

`measure` evaluates the model and its empirical NTK on the probe batch (T4) and, given the
previous reading's weights, the linearised outputs of T12 (one Jacobian-vector product),
leaving the model's modes, buffers and every random state as they were. `take_reading`
hands the result to :mod:`.readout`, the pure arithmetic of the logged scalars.

Two hooks serve the fail-soft policy of :mod:`.guard`: ``lean=True`` retries a reading that ran
out of memory in smaller pieces (the probe batch in chunks of a `LEAN_SHARE`-th and, on CUDA,
the kernel under a `LEAN_SHARE`-th of its default memory budget: the same quantities, less
memory at once), and ``sync`` lets the ranks of a distributed reading agree, between the
local forward and the kernel's collectives, that every rank is still in it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from cosmo_optim._common import cast_copy, one_thread, preserved, same_on_every_rank, training
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual.linearised import WeightSnapshot, linearised_outputs
from cosmo_optim.losses import PerSampleLoss
from cosmo_optim.monitor.batches import device_of
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.model_loss import own_loss
from cosmo_optim.monitor.readout import Linearised, ReadingResult, RunSoFar, read_out, skipped
from cosmo_optim.ntk import ModelInputs, empirical_ntk
from cosmo_optim.spectrum import flat_kernel

__all__ = [
    "LEAN_SHARE", "Measured", "Sync", "measure", "model_outputs", "own_loss_of", "precision_of",
    "probe_outputs", "rank0_buffers", "reading_model", "take_reading",
]

#: A lean retry (after running out of memory) takes the probe batch in chunks of 1/LEAN_SHARE
#: of its samples and plans the kernel under 1/LEAN_SHARE of `empirical_ntk`'s default memory
#: budget (which is a quarter of the free memory: 1/16 of it on CUDA).
LEAN_SHARE: Final = 4

#: Called by every rank of a distributed reading with its failure so far (None: none) before
#: the kernel's collectives; it raises on a rank that did not fail when another one did.
Sync = Callable[[Exception | None], None]

_T = TypeVar("_T")


class Measured(NamedTuple):
    """What a reading measures on the model: outputs f (N, ...) and the flat NTK (N·C, N·C),
    float64 on the CPU (T4), exact, and the `Linearised` outputs from the previous reading's
    weights (T12), if given."""

    outputs: Tensor
    kernel: Tensor
    linearised: Linearised | None = None


def _select(out: Any, output: Any) -> Tensor:
    """The outputs of a model's result picked by `output` (a key/attribute or a callable);
    without `output` a non-tensor result is an error naming the fix."""
    if callable(output):
        out = output(out)
    elif isinstance(output, str):
        out = out[output] if isinstance(out, Mapping) else getattr(out, output)
    if not isinstance(out, Tensor):
        kind = type(out).__name__
        raise ValueError(
            f"CosmologyTracker: the model returned a {kind}, not a Tensor of outputs. "
            "Fix: pass output='logits' (a key or attribute) or output=lambda out: out[0] "
            "to select the outputs the loss is applied to."
        )
    return out


class _Selected(nn.Module):
    """`model` with its outputs selected by `output` (a key/attribute or a callable), so that
    the NTK engine sees a tensor-to-tensor map. Without `output` a non-tensor result is an
    error naming the fix."""

    def __init__(self, model: nn.Module, output: Any = None) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return _select(self.model(*args, **kwargs), self.output)


def precision_of(model: nn.Module) -> torch.dtype:
    """The dtype readings compute in (docs/callbacks.md): float64 for a float64 model, else
    float32, whatever autocast the caller has open (a bfloat16 or float16 model is read through
    a float32 copy, `reading_model`)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return torch.float64 if torch.float64 in dtypes else torch.float32


@contextlib.contextmanager
def reading_model(model: nn.Module) -> Iterator[nn.Module]:
    """The model a reading evaluates, in `precision_of` it, with autocast off on the CPU and
    the model's device: the model itself, or a float32 copy of a half-precision one (its
    weights and buffers cast, the model untouched; one model's worth of float32 while the
    reading runs)."""
    dtype = precision_of(model)
    floating = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    twin = model if all(t.dtype in (dtype, torch.float64) for t in floating) else cast_copy(
        model, {}, dtype)[0]
    with contextlib.ExitStack() as stack:
        for kind in {"cpu", device_of(model).type}:
            stack.enter_context(torch.autocast(kind, enabled=False))
        yield twin


def model_outputs(model: nn.Module, inputs: Any, output: Any = None,
                  chunk: int | None = None) -> Tensor:
    """f on the probe batch (a `ModelInputs`, moved to the model's device and floating dtype)
    in eval mode, float64 on the CPU; nothing about the model or any random state changes.
    `output` selects f from a tuple/dict result (`_Selected`); `chunk` evaluates at most that
    many samples at once (samples are independent, so f is the same up to rounding)."""
    x = ModelInputs(inputs)
    with preserved(model, device_of(model)), training(model, False), torch.no_grad():
        net = _Selected(model, output)
        try:
            parts = [part.for_model(model).call(net) for part in _chunks(x, chunk)]
        except Exception as error:
            if hasattr(error, "add_note"):  # Python ≥ 3.11: the same error, with where it arose
                error.add_note(f"cosmo-optim: raised by the model called on the probe batch, "
                               f"{x!r}. Fix: a probe batch shaped as the model's training "
                               "batches (probe_batch=, input_key=).")
            raise
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.detach().double().cpu()


def probe_outputs(model: nn.Module, inputs: Any, config: MonitorConfig,
                  lean: bool = False) -> Tensor:
    """f on the probe batch as a reading takes it (`model_outputs` in the reading's precision;
    under DDP with rank 0's buffers, `rank0_buffers`): the next reading's f_{n−1}, for its
    velocity ḟ (T2)."""
    x = ModelInputs(inputs)
    with rank0_buffers(model, config.distributed), reading_model(model) as net:
        return model_outputs(net, x, config.output, _lean_chunk(x, lean))


def own_loss_of(model: nn.Module, inputs: Any, targets: Tensor,
                config: MonitorConfig) -> tuple[PerSampleLoss | None, str]:
    """The model's own loss on the probe batch, as a reading takes the model (its precision,
    eval mode, nothing changed; under DDP rank 0's buffers): `model_loss.own_loss`."""
    x = ModelInputs(inputs)
    with rank0_buffers(model, config.distributed), reading_model(model) as net, preserved(
            net, device_of(net)), training(net, False), torch.no_grad():
        return own_loss(net, x.for_model(net), targets, config.label_key or "labels",
                        lambda out: _select(out, config.output))


def _lean_chunk(inputs: ModelInputs, lean: bool) -> int | None:
    """Samples at once: a `LEAN_SHARE`-th of the probe batch when lean, else all (None)."""
    return -(-len(inputs) // LEAN_SHARE) if lean else None


def _chunks(inputs: ModelInputs, chunk: int | None) -> list[ModelInputs]:
    if chunk is None:
        return [inputs]
    return [inputs[i:i + chunk] for i in range(0, len(inputs), chunk)]


def measure(model: nn.Module, inputs: Any, config: MonitorConfig | None = None, *,
            first: bool = False, snapshot: WeightSnapshot | None = None, lean: bool = False,
            sync: Sync | None = None) -> Measured:
    """f and Θ on the probe batch (T4), and the linearised outputs from `snapshot` (T12).

    The kernel is exact: the full N·C kernel for C > 1 output components, planned by
    `empirical_ntk` under its default memory budget (`MemoryBudgetError` when even one sample's
    passes do not fit it). On the `first` reading ``config.verify_ntk`` has the kernel checked
    against brute force. With the previous reading's
    `snapshot` of the weights, one Jacobian-vector product gives f(θ_ref) and
    J(θ_ref)(θ − θ_ref) on the probe batch (`linearised_outputs`). Everything is computed in
    `precision_of` the model, autocast off (`reading_model`). `lean` and `sync`: see the
    module docstring.
    """
    config, x = config or MonitorConfig(), ModelInputs(inputs)
    chunk = _lean_chunk(x, lean)
    with rank0_buffers(model, config.distributed), reading_model(model) as net:
        f = _agreed(sync, lambda: model_outputs(net, x, config.output, chunk))
        kernel = _kernel(net, x, f, config, first, _lean_budget(model, lean))
        linear = None if snapshot is None or not _covered(net, snapshot) else _linearisable(
            net, x, config, snapshot, chunk)
    return Measured(f, kernel, linear)


def _covered(model: nn.Module, snapshot: WeightSnapshot) -> bool:
    """Whether the linearisation from `snapshot` covers the model now; one warning per kind
    of change when it does not (the reading then has no residual)."""
    changed = snapshot.changes(model)
    if changed is not None:
        warnings.warn(
            f"CosmologyTracker: since the reading at step {snapshot.step} the model's "
            f"{changed}; the residual, which compares with that reading's weights, is not "
            "measured at the next reading and resumes after it (T12).",
            UserWarning, stacklevel=6,
        )
    return changed is None


def _agreed(sync: Sync | None, run: Callable[[], _T]) -> _T:
    """`run()`, then `sync` with its failure (re-raised here), so that no rank goes on into a
    collective that another rank will not enter."""
    if sync is None:
        return run()
    try:
        out = run()
    except Exception as error:
        sync(error)
        raise
    sync(None)
    return out


def _lean_budget(model: nn.Module, lean: bool) -> int | None:
    """The kernel's memory budget for a lean retry: 1/LEAN_SHARE of `empirical_ntk`'s default
    (a quarter of the free memory) on CUDA; None (the default, read again now that the failed
    attempt's memory is free) elsewhere and when not lean."""
    device = device_of(model)
    if not lean or device.type != "cuda":
        return None
    return max(torch.cuda.mem_get_info(device)[0] // (4 * LEAN_SHARE), 1)


def _kernel(model: nn.Module, inputs: ModelInputs, f: Tensor, config: MonitorConfig,
            first: bool, budget: int | None) -> Tensor:
    """The flat exact NTK (N·C, N·C), float64 on the CPU (`empirical_ntk`, which runs in eval
    mode and restores buffers and random states by itself), planned under `budget` bytes
    (None: the default); the full kernel when the model has C > 1 output components."""
    net = model if config.output is None else _Selected(model, config.output)
    x, output = inputs.for_model(model), "full" if f[0].numel() > 1 else "trace"
    kernel = empirical_ntk(net, x, output=output, verify=config.verify_ntk and first,
                           distributed=config.distributed, memory_budget=budget)
    return flat_kernel(kernel.detach().double().cpu())


def _linearisable(model: nn.Module, inputs: ModelInputs, config: MonitorConfig,
                  snapshot: WeightSnapshot, chunk: int | None) -> Linearised | None:
    """`_linearised`, or None (no T12 residual, the rest of the reading kept) for a model with
    an op that has neither a forward-mode nor a double-backward rule (``nn.EmbeddingBag``)."""
    try:
        return _linearised(model, inputs, config, snapshot, chunk)
    except NotImplementedError as error:
        warnings.warn(
            f"CosmologyTracker: the duality test (T12) needs J·v on the probe batch, and this "
            f"model has an op PyTorch cannot differentiate that way ({error}); readings go on "
            "without duality/residual, duality/relative_residual and the verdict. Fix: where "
            "the op has an equivalent (nn.EmbeddingBag(mode='mean') is nn.Embedding then a "
            "mean), use it in the model.", RuntimeWarning, stacklevel=2)
        return None


def _linearised(model: nn.Module, inputs: ModelInputs, config: MonitorConfig,
                snapshot: WeightSnapshot, chunk: int | None = None) -> Linearised:
    """f(θ_ref) and J(θ_ref)(θ − θ_ref) on the probe batch, in eval mode as `model_outputs`
    (`chunk` samples at a time)."""
    def select(out: Any) -> Tensor:
        return _select(out, config.output)

    with preserved(model, device_of(model)), training(model, False):
        parts = [linearised_outputs(model, part.for_model(model), snapshot, select)
                 for part in _chunks(inputs, chunk)]
    ref, change = (torch.cat(t) for t in zip(*parts, strict=True))
    eps = torch.finfo(ref.dtype).eps if ref.is_floating_point() else 0.0
    return Linearised(ref.double().cpu(), change.double().cpu(), eps)


@contextlib.contextmanager
def rank0_buffers(model: nn.Module, active: bool) -> Iterator[None]:
    """Under DDP (`active`), rank 0's buffers on every rank while probing, as DDP broadcasts
    them before each forward (BatchNorm's running statistics drift apart between forwards:
    each rank updates them from its own batch); each rank's own are restored after."""
    if not active:
        yield
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    for b, _ in saved:
        torch.distributed.broadcast(b.data, src=0)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, own in saved:
                b.copy_(own)


def take_reading(
    model: nn.Module,
    inputs: Any,
    targets: Tensor | None,
    *,
    config: MonitorConfig,
    cosmology: Cosmology | None,
    run: RunSoFar,
    snapshot: WeightSnapshot | None = None,
    lean: bool = False,
    sync: Sync | None = None,
) -> ReadingResult:
    """`measure` (the model's forward, NTK and linearisation, on the threads training uses)
    then `read_out` (on one thread), or `skipped` when f or Θ is not finite. `inputs` is the
    probe batch as the model takes it (anything `cosmo_optim.ntk.ModelInputs` takes); `lean`
    and `sync` go to `measure`."""
    first, inputs = run.reference is None, ModelInputs(inputs)
    if first and config.distributed and not same_on_every_rank(
            [*inputs.tensors(), *([] if targets is None else [targets])]):
        raise ValueError(
            "CosmologyTracker(distributed=True): the probe batch (inputs or targets) differs "
            f"across ranks (rank {torch.distributed.get_rank()}). Fix: give every rank the same "
            "probe_batch, e.g. broadcast rank 0's with torch.distributed.broadcast_object_list."
        )
    m = measure(model, inputs, config, first=first, snapshot=snapshot, lean=lean, sync=sync)
    if not (torch.isfinite(m.outputs).all() and torch.isfinite(m.kernel).all()):
        return skipped(run, config.prefix)
    with one_thread():  # probe-sized linear algebra (docs/callbacks.md, "Cost")
        return read_out(m.outputs, m.kernel, config=config, cosmology=cosmology,
                        targets=targets, run=run, linearised=m.linearised)
