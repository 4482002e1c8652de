"""One reading as a pure function: (model, probe batch, cosmology, loss, run so far) → read-out.

`measure` evaluates the model and its empirical NTK on the probe batch (T4), leaving the model's
modes, buffers and every random state as they were. `_read_out` turns outputs f and kernel Θ
into the logged scalars: the spectrum and mode amplitudes (T7), the de Sitter background and,
with a loss, the `FLRWDual` (T3, T5–T9), and the residual of the previous probe's discrete NTK
prediction (T10). Neither touches a tracker: both are testable without any trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cosmo_optim._common import one_thread, preserved, same_on_every_rank, training
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual, predict_trajectory
from cosmo_optim.losses import PerSampleLoss
from cosmo_optim.monitor.batches import device_of, to_model
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.records import LastReading, PredictedModes, Reading, Reference
from cosmo_optim.ntk import MemoryBudgetError, empirical_ntk
from cosmo_optim.spectrum import flat_kernel, kernel_distance, ntk_eigen, uniform_overlaps

__all__ = ["ReadingResult", "RunSoFar", "measure", "model_outputs", "rank0_buffers", "take_reading"]


@dataclass(frozen=True)
class RunSoFar:
    """What a probe reads from earlier probes: the step, accumulated e-folds (T9), the count
    of skipped non-finite probes, the outputs of the step before (for ḟ, T2), the first
    probe (`Reference`) and the latest one (`LastReading`)."""

    step: int
    efolds: float = 0.0
    nonfinite: int = 0
    previous_outputs: tuple[int, Tensor] | None = None
    reference: Reference | None = None
    last: LastReading | None = None


@dataclass(frozen=True)
class ReadingResult:
    """A probe's read-out: the prefixed `scalars`, the `record` for the history (None when
    the probe was skipped as non-finite), the new `reference` and `last` states, and the
    `dual` (None without a heavy-ball optimiser or a loss)."""

    scalars: dict[str, float]
    record: Reading | None
    reference: Reference | None
    last: LastReading | None
    dual: FLRWDual | None = None


class _Selected(nn.Module):
    """`model` with its outputs selected by `output` (a key/attribute or a callable), so that
    the NTK engine sees a tensor-to-tensor map. Without `output` a non-tensor result is an
    error naming the fix."""

    def __init__(self, model: nn.Module, output: Any = None) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.model(inputs)
        if callable(self.output):
            out = self.output(out)
        elif isinstance(self.output, str):
            out = out[self.output] if isinstance(out, Mapping) else getattr(out, self.output)
        if not isinstance(out, Tensor):
            kind = type(out).__name__
            raise ValueError(
                f"CosmologyTracker: the model returned a {kind}, not a Tensor of outputs. "
                "Fix: pass output='logits' (a key or attribute) or output=lambda out: out[0] "
                "to select the outputs the loss is applied to."
            )
        return out


def model_outputs(model: nn.Module, inputs: Tensor, output: Any = None) -> Tensor:
    """f on the probe inputs (cast to the model's device and dtype, `to_model`) in eval mode,
    float64 on the CPU; nothing about the model or any random state changes. `output` selects
    f from a tuple/dict result (`_Selected`)."""
    with preserved(model, device_of(model)), training(model, False), torch.no_grad():
        out = _Selected(model, output)(to_model(model, inputs))
    return out.detach().double().cpu()


def measure(model: nn.Module, inputs: Tensor, config: MonitorConfig | None = None, *,
            first: bool = False, known: int | None = None) -> tuple[Tensor, Tensor, int]:
    """(f, Θ, k): the outputs (N, ...), the flat output-space NTK (N·C, N·C), both float64
    (T4), and which kernel Θ is (k of the sketch, 0 for the exact kernel).

    ``config.ntk_method="fit"`` takes the exact kernel where it fits `empirical_ntk`'s default
    memory budget and the sketch where it does not (`MemoryBudgetError`); `known` is the kernel
    earlier probes took, kept while it fits. On the `first` probe ``config.verify_ntk`` has the
    kernel checked against brute force (exact kernels only).
    """
    config = config or MonitorConfig()
    with rank0_buffers(model, config.distributed):
        return _measure(model, inputs, config, first, known)


def _measure(model: nn.Module, inputs: Tensor, config: MonitorConfig, first: bool,
             known: int | None) -> tuple[Tensor, Tensor, int]:
    f = model_outputs(model, inputs, config.output)
    net = model if config.output is None else _Selected(model, config.output)
    x, output = to_model(model, inputs), "full" if f[0].numel() > 1 else "trace"
    verify = config.verify_ntk and first
    k = {"exact": 0, "sketch": config.sketch_k}.get(config.ntk_method, known or None)
    if k is None:  # "fit": exact so far, or not yet known
        try:
            return f, _ntk(net, x, output, 0, verify, config.distributed), 0
        except MemoryBudgetError:
            k = config.sketch_k
    if k and verify:
        raise ValueError(
            f"Invalid verify_ntk: True, but this probe's exact kernel does not fit the default "
            f"memory budget and the monitor sketches it (k = {k}); the self-check needs an exact "
            "kernel. Fix: verify_ntk=False, or a smaller probe_size."
        )
    return f, _ntk(net, x, output, k, verify, config.distributed), k


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


def _ntk(net: nn.Module, x: Tensor, output: str, k: int, verify: bool,
         distributed: bool) -> Tensor:
    """The flat NTK, float64 on the CPU: exact (k = 0) or sketched with k (`empirical_ntk`,
    which runs in eval mode and restores buffers and random states by itself)."""
    kernel = empirical_ntk(net, x, output=output, method="sketch" if k else "auto",
                           sketch_dim=k or None, verify=verify, distributed=distributed)
    return flat_kernel(kernel.detach().double().cpu())


def _check_loss(loss: PerSampleLoss, f: Tensor, targets: Tensor | None) -> None:
    """The loss must give one value per probe sample on these outputs and targets; else a
    one-line ValueError naming the shapes and the fix (checked at the first probe)."""
    try:
        shape_got = tuple(loss.per_sample(f, targets).shape)
        got = f"shape {shape_got}"
        ok = shape_got == (f.shape[0],)
    except Exception as error:  # whatever the user's loss raises is reported in one line
        got, ok = f"{type(error).__name__}: {error}".splitlines()[0], False
    if not ok:
        shape = None if targets is None else tuple(targets.shape)
        raise ValueError(
            f"CosmologyTracker: the loss {loss.name} does not give one value per sample on the "
            f"model's outputs of shape {tuple(f.shape)} with targets of shape {shape} (got "
            f"{got}). Fix: pass the loss the model is trained with (e.g. nn.CrossEntropyLoss() "
            "for class logits, nn.MSELoss() for regression), or output=... to select the "
            "outputs it is applied to."
        )


def _skipped(run: RunSoFar, prefix: str) -> ReadingResult:
    """The read-out of a probe with non-finite outputs or kernel: only the count."""
    scalars = {prefix + "cosmology/nonfinite": float(run.nonfinite + 1)}
    return ReadingResult(scalars, None, run.reference, None)  # no prediction across a bad probe


def _read_out(
    f: Tensor,
    kernel: Tensor,
    *,
    config: MonitorConfig,
    cosmology: Cosmology | None,
    targets: Tensor | None,
    run: RunSoFar,
    sketch_dim: int = 0,
) -> ReadingResult:
    """Every scalar of one probe at step ``run.step`` from outputs f and kernel Θ (T3–T10);
    `sketch_dim` says which kernel Θ is (k of the sketch, 0 for the exact kernel)."""
    n, step = f.shape[0], run.step
    if run.reference is not None and run.reference.sketch_dim != sketch_dim:
        warnings.warn(
            f"CosmologyTracker: the kernel at step {step} is {_kind(sketch_dim)}, the first "
            f"probe's was {_kind(run.reference.sketch_dim)}; ntk/kernel_distance, "
            "ntk/basis_rotation and the initial-basis amplitudes are measured from this probe "
            "on (ntk_method or sketch_dim changed, e.g. on resume).",
            UserWarning, stacklevel=4,
        )
        run = dataclasses.replace(run, reference=None)
    k = min(config.top_k, kernel.shape[0])
    if run.reference is not None and (run.reference.kernel.shape != kernel.shape
                                      or run.reference.eigenvectors.shape[1] != k):
        warnings.warn(
            f"CosmologyTracker: the reading at step {step} follows {k} modes of a kernel of "
            f"shape {tuple(kernel.shape)}, the first reading "
            f"{run.reference.eigenvectors.shape[1]} of {tuple(run.reference.kernel.shape)}; "
            "ntk/kernel_distance, ntk/basis_rotation and "
            "the initial-basis amplitudes are measured from this reading on (top_k or the probe "
            "batch changed, e.g. on resume).",
            UserWarning, stacklevel=4,
        )
        run = dataclasses.replace(run, reference=None, last=None)
    if run.reference is None and config.loss is not None:
        _check_loss(config.loss, f, targets)
    warm = None if run.last is None else run.last.eigenvectors
    lam, vec = ntk_eigen(kernel, k=k, warm_start=warm)
    reference = run.reference or Reference(kernel, vec, sketch_dim)
    ref = reference.eigenvectors
    vec = vec * torch.where((ref * vec).sum(0) < 0, -1.0, 1.0).to(vec)  # continuity
    s, initial = _spectrum_scalars(f, kernel, lam, vec, reference)
    dual, velocity = None, None
    if cosmology is not None:
        s["cosmology/hubble_rate"] = cosmology.hubble_rate
        s["cosmology/vacuum_energy"] = cosmology.vacuum_energy
        s["cosmology/efolds"] = run.efolds
        if config.loss is not None:
            velocity = _velocity(run, f, cosmology)
            dual = FLRWDual.from_eigen(
                lam, vec, config.loss, f, cosmology=cosmology, targets=targets,
                velocity=velocity, step=step,
            )
            s.update(_dual_scalars(dual))
    s["ntk/mean_field_overlap"] = float(uniform_overlaps(vec, n).max())
    s["ntk/sketch_dim"] = float(sketch_dim)
    s["cosmology/nonfinite"] = float(run.nonfinite)
    s.update(_residual(run.last, step, f))
    prediction = None
    if dual is not None and velocity is not None:
        prediction = _predict(dual, config.interval, reference)
    scalars = {config.prefix + key: value for key, value in sorted(s.items())}
    record = Reading(
        step=step, scalars=scalars, eigenvalues=lam.clone(), mean_field=f.reshape(n, -1).mean(0),
        initial_amplitudes=initial.clone(), prediction=prediction[0] if prediction else None,
        sketch_dim=sketch_dim,
    )
    last = LastReading(step, vec, f, prediction[1] if prediction else None)
    return ReadingResult(scalars, record, reference, last, dual)


def _kind(sketch_dim: int) -> str:
    return f"a sketch with k = {sketch_dim}" if sketch_dim else "exact"


def _spectrum_scalars(
    f: Tensor, kernel: Tensor, lam: Tensor, vec: Tensor, reference: Reference
) -> tuple[dict[str, float], Tensor]:
    """λ_1, λ_k/λ_1, drift and rotation since the first probe, α_eff, φ̄ and the amplitudes
    f̃ = Uᵀf in the current and the first basis (T4, T7); also the latter amplitudes."""
    n, k, ref = f.shape[0], vec.shape[1], reference.eigenvectors
    s: dict[str, float] = {}
    lam_1 = float(lam[0])
    s["ntk/lambda_1"] = lam_1
    for j in range(1, k):
        s[f"ntk/ratio_{j + 1}"] = float(lam[j]) / lam_1 if lam_1 else math.nan
    s["ntk/kernel_distance"] = float(kernel_distance(reference.kernel, kernel))
    s["ntk/basis_rotation"] = 1.0 - float((ref.T @ vec).pow(2).sum()) / k
    s["cosmology/alpha_eff"] = lam_1 / n
    if f[0].numel() == 1:
        s["cosmology/field"] = float(f.mean())
    flat = f.reshape(-1)
    amplitudes, initial = vec.T @ flat, ref.T @ flat  # f̃ = Uᵀ f (T7)
    for j in range(k):
        s[f"modes/amplitude_{j + 1}"] = float(amplitudes[j])
        s[f"modes/initial_amplitude_{j + 1}"] = float(initial[j])
    return s, initial


def _dual_scalars(dual: FLRWDual) -> dict[str, float]:
    """V(φ̄), Ω_φ, slow roll, stability, m_k/H and the active modes of the dual (T5–T10)."""
    s: dict[str, float] = {}
    s["cosmology/potential"] = float(dual.potential(dual.mean_field))
    s["cosmology/omega_phi"] = dual.vacuum_domination
    s["cosmology/slow_roll_epsilon"], s["cosmology/slow_roll_eta"] = dual.slow_roll
    s["cosmology/stability_margin"] = dual.stability_margin
    for j, value in enumerate(dual.mass_over_hubble.tolist()):
        s[f"modes/mass_over_hubble_{j + 1}"] = value
    s["modes/active"] = float(dual.active_modes())
    return s


def _velocity(run: RunSoFar, f: Tensor, cosmology: Cosmology) -> Tensor | None:
    """ḟ = (f_n − f_{n−1})/sqrt(η) (T2); exactly zero at step 0 (T1); None if unknown."""
    if run.step == 0:
        return torch.zeros_like(f)
    prev = run.previous_outputs
    if prev is None or prev[0] != run.step - 1:
        return None
    return (f - prev[1]) / cosmology.time_step


def _predict(
    dual: FLRWDual, steps: int, reference: Reference
) -> tuple[PredictedModes, tuple[int, Tensor]] | None:
    """Iterate the exact discrete NTK map (T10) `steps` steps: the amplitudes in the first
    basis along the way and the outputs at the end; None if the map diverges."""
    try:
        pred = predict_trajectory(dual, steps, method="discrete")
    except ValueError:  # the map diverges (stability margin ≥ 1, T10): nothing to compare
        return None
    assert pred.outputs is not None
    outputs = torch.from_numpy(pred.outputs).reshape(steps + 1, -1)
    modes = PredictedModes(
        steps=[dual.step + i for i in range(steps + 1)],
        amplitudes=outputs.to(torch.float64) @ reference.eigenvectors,
    )
    return modes, (dual.step + steps, outputs[-1])


def _residual(last: LastReading | None, step: int, f: Tensor) -> Mapping[str, float]:
    """RMS gap between the outputs the last probe predicted for `step` and the actual ones,
    and that gap relative to how far the outputs moved (0 = perfect, 1 = no better than
    predicting no motion)."""
    if last is None or last.prediction is None or last.prediction[0] != step:
        return {}
    predicted = last.prediction[1].to(f)
    gap = (f.reshape(-1) - predicted).norm()
    moved = (f - last.outputs).norm()
    return {
        "duality/residual": float(gap) / math.sqrt(f.numel()),
        "duality/relative_residual": float(gap / moved) if moved > 0 else math.nan,
    }


def take_reading(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None,
    *,
    config: MonitorConfig,
    cosmology: Cosmology | None,
    run: RunSoFar,
) -> ReadingResult:
    """`measure` (the model's forward and NTK, on the threads training uses) then `_read_out`
    (on one thread), or `_skipped` when f or Θ is not finite."""
    first = run.reference is None
    if first and config.distributed and not same_on_every_rank(
            [t for t in (inputs, targets) if t is not None]):
        raise ValueError(
            "CosmologyTracker(distributed=True): the probe batch (inputs or targets) differs "
            f"across ranks (rank {torch.distributed.get_rank()}). Fix: give every rank the same "
            "probe_batch, e.g. broadcast rank 0's with torch.distributed.broadcast_object_list."
        )
    known = None if run.reference is None else run.reference.sketch_dim
    f, kernel, k = measure(model, inputs, config, first=first, known=known)  # training's threads
    if not (torch.isfinite(f).all() and torch.isfinite(kernel).all()):
        return _skipped(run, config.prefix)
    with one_thread():  # probe-sized linear algebra (docs/callbacks.md, "Cost")
        return _read_out(f, kernel, config=config, cosmology=cosmology, targets=targets,
                        run=run, sketch_dim=k)
