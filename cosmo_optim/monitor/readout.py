"""A reading's arithmetic, as a pure function: outputs f and kernel Θ → the logged read-out.

`read_out` diagonalises the whole kernel once (all N·C modes), logs the `top_k` of them (T7),
reads the de Sitter background and, with a loss, the `FLRWDual` of every mode (T3, T5–T10),
and compares this reading with the previous one: the residual of the linearised outputs
(the duality test, T12), how far the kernel moved, and the forecast the previous reading's
dual made as if training were full-batch on the probe batch (T10). It touches no model and
no tracker: it is testable without either.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual, predict_trajectory
from cosmo_optim.dual.linearised import linearisation_residual
from cosmo_optim.dual.modes import alpha_eff
from cosmo_optim.losses import PerSampleLoss
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.records import LastReading, PredictedModes, Reading, Reference
from cosmo_optim.spectrum import fix_signs, kernel_change, kernel_distance, uniform_overlaps

__all__ = ["Linearised", "ReadingResult", "RunSoFar", "read_out", "skipped"]


@dataclass(frozen=True)
class RunSoFar:
    """What a reading reads from earlier ones: the step, accumulated e-folds (T9), the count of
    skipped non-finite readings, the outputs of the step before (for ḟ, T2), the first reading
    (`Reference`), the latest one (`LastReading`), and the count of readings that raised
    (`cosmo_optim.monitor.guard`; logged once it is > 0)."""

    step: int
    efolds: float = 0.0
    nonfinite: int = 0
    previous_outputs: tuple[int, Tensor] | None = None
    reference: Reference | None = None
    last: LastReading | None = None
    failed: int = 0


@dataclass(frozen=True)
class Linearised:
    """The outputs the previous reading's frozen kernel gives for this step (T12): f(θ_ref)
    with this step's buffers, and J(θ_ref)(θ − θ_ref) (both shaped like f, float64), and the
    precision `eps` of the dtype the model computed them in."""

    reference_outputs: Tensor
    change: Tensor
    eps: float = 0.0

    @property
    def outputs(self) -> Tensor:
        """f(θ_ref) + J(θ_ref)(θ − θ_ref)."""
        return self.reference_outputs + self.change


@dataclass(frozen=True)
class ReadingResult:
    """A reading's read-out: the prefixed `scalars`, the `record` for the history (None when
    the reading was skipped as non-finite), the new `reference` and `last` states, and the
    `dual` (None without a heavy-ball optimiser or a loss)."""

    scalars: dict[str, float]
    record: Reading | None
    reference: Reference | None
    last: LastReading | None
    dual: FLRWDual | None = None


def skipped(run: RunSoFar, prefix: str) -> ReadingResult:
    """The read-out of a reading with non-finite outputs or kernel: only the counts."""
    scalars = {prefix + "cosmology/nonfinite": float(run.nonfinite + 1), **_failed(run, prefix)}
    return ReadingResult(scalars, None, run.reference, None)  # nothing is compared across it


def _failed(run: RunSoFar, prefix: str) -> dict[str, float]:
    """``cosmology/failed_readings`` once a reading has raised (`cosmo_optim.monitor.guard`)."""
    return {prefix + "cosmology/failed_readings": float(run.failed)} if run.failed else {}


def read_out(
    f: Tensor,
    kernel: Tensor,
    *,
    config: MonitorConfig,
    cosmology: Cosmology | None,
    targets: Tensor | None,
    run: RunSoFar,
    linearised: Linearised | None = None,
) -> ReadingResult:
    """Every scalar of one reading at step ``run.step`` from outputs f (N, ...) and the flat
    kernel Θ (N·C, N·C), both float64 (T3–T12), the kernel exact (``ntk/sketch_dim`` = 0;
    older checkpoints may hold sketched readings, k > 0); `linearised` is what the previous
    reading's frozen kernel gives here."""
    sketch_dim = 0
    run = _compatible(run, kernel, sketch_dim, min(config.top_k, kernel.shape[0]))
    if run.reference is None and isinstance(config.loss, PerSampleLoss):
        _check_loss(config.loss, f, targets)
    lam_all, vec_all = _spectrum(kernel)
    lam, vec = _followed(lam_all, vec_all, config.top_k, run)
    reference = run.reference or Reference(kernel, vec, sketch_dim)
    s, initial = _spectrum_scalars(f, kernel, lam, vec, reference)
    n, c = f.shape[0], f[0].numel()
    s["cosmology/alpha_eff"] = alpha_eff(lam_all, vec_all, n, c)
    s["ntk/mean_field_overlap"] = float(uniform_overlaps(vec_all, n).max())
    s["ntk/sketch_dim"] = float(sketch_dim)
    s["cosmology/nonfinite"] = float(run.nonfinite)
    dual = _dual(f, lam_all, vec_all, config, cosmology, targets, run)
    if cosmology is not None:
        s["cosmology/hubble_rate"] = cosmology.hubble_rate
        s["cosmology/vacuum_energy"] = cosmology.vacuum_energy
        s["cosmology/efolds"] = run.efolds
    if dual is not None:
        s.update(_dual_scalars(dual, lam.numel()))
    s.update(_against_last(run.last, run.step, f, kernel, linearised))
    forecast = _forecast(dual, config.interval, reference) if dual is not None else None
    s.update(_failed(run, ""))
    scalars = {config.prefix + key: value for key, value in sorted(s.items())}
    linear = None if linearised is None else (
        linearised.outputs.reshape(-1) @ reference.eigenvectors.to(torch.float64))
    record = Reading(
        step=run.step, scalars=scalars, eigenvalues=lam.clone(),
        mean_field=f.reshape(n, -1).mean(0), initial_amplitudes=initial.clone(),
        prediction=forecast[0] if forecast else None, sketch_dim=sketch_dim,
        linearised_amplitudes=linear,
    )
    last = LastReading(run.step, vec, f, forecast[1] if forecast else None, kernel)
    return ReadingResult(scalars, record, reference, last, dual)


def _compatible(run: RunSoFar, kernel: Tensor, sketch_dim: int, k: int) -> RunSoFar:
    """The run with its first reading dropped (one warning) when this reading cannot be
    compared with it: another kernel (exact/sketch), shape or number of followed modes."""
    ref, step = run.reference, run.step
    if ref is None:
        return run
    if ref.sketch_dim != sketch_dim:
        what = (f"the kernel at step {step} is {_kind(sketch_dim)}, the first reading's was "
                f"{_kind(ref.sketch_dim)}")
        why = "the checkpoint's readings were sketched; a monitor now reads the exact kernel"
    elif ref.kernel.shape != kernel.shape or ref.eigenvectors.shape[1] != k:
        what = (f"the reading at step {step} follows {k} modes of a kernel of shape "
                f"{tuple(kernel.shape)}, the first reading {ref.eigenvectors.shape[1]} of "
                f"{tuple(ref.kernel.shape)}")
        why = "top_k or the probe batch changed"
    else:
        return run
    warnings.warn(
        f"CosmologyTracker: {what}; ntk/kernel_distance, ntk/basis_rotation and the "
        f"initial-basis amplitudes are measured from this reading on ({why}, e.g. on resume).",
        UserWarning, stacklevel=5,
    )
    return dataclasses.replace(run, reference=None, last=None)


def _kind(sketch_dim: int) -> str:
    return f"a sketch with k = {sketch_dim}" if sketch_dim else "exact"


def _check_loss(loss: PerSampleLoss, f: Tensor, targets: Tensor | None) -> None:
    """The loss must give one value per probe sample on these outputs and targets; else a
    one-line ValueError naming the shapes and the fix (checked at the first reading)."""
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


def _spectrum(kernel: Tensor) -> tuple[Tensor, Tensor]:
    """Every eigenpair of the (symmetrised) kernel, descending; round-off negative
    eigenvalues are 0, as Θ is positive semi-definite (T4). O((N·C)³), the reading's
    largest term after the kernel itself."""
    lam, vec = torch.linalg.eigh(0.5 * (kernel + kernel.T))
    return lam.flip(0).clamp(min=0), vec.flip(1)


def _followed(lam: Tensor, vec: Tensor, top_k: int, run: RunSoFar) -> tuple[Tensor, Tensor]:
    """The `top_k` modes that are logged, each eigenvector's sign continuous with the first
    reading's (else: its largest entry positive)."""
    k = min(top_k, lam.numel())
    lam, vec = lam[:k], fix_signs(vec[:, :k])
    if run.reference is not None:
        ref = run.reference.eigenvectors
        vec = vec * torch.where((ref * vec).sum(0) < 0, -1.0, 1.0).to(vec)
    return lam, vec


def _spectrum_scalars(
    f: Tensor, kernel: Tensor, lam: Tensor, vec: Tensor, reference: Reference
) -> tuple[dict[str, float], Tensor]:
    """λ_1, λ_k/λ_1, drift and rotation since the first reading, φ̄ and the amplitudes
    f̃ = Uᵀf in the current and the first basis (T4, T7); also the latter amplitudes."""
    k, ref = vec.shape[1], reference.eigenvectors
    s: dict[str, float] = {}
    lam_1 = float(lam[0])
    s["ntk/lambda_1"] = lam_1
    for j in range(1, k):
        s[f"ntk/ratio_{j + 1}"] = float(lam[j]) / lam_1 if lam_1 else math.nan
    first = reference.kernel is kernel  # its own reference: 0, not 1 − cosine's rounding
    s["ntk/kernel_distance"] = 0.0 if first else float(kernel_distance(reference.kernel, kernel))
    s["ntk/basis_rotation"] = 0.0 if first else max(
        0.0, 1.0 - float((ref.T @ vec).pow(2).sum()) / k)  # ≥ 0 but for rounding
    if f[0].numel() == 1:
        s["cosmology/field"] = float(f.mean())
    flat = f.reshape(-1)
    amplitudes, initial = vec.T @ flat, ref.T @ flat  # f̃ = Uᵀ f (T7)
    for j in range(k):
        s[f"modes/amplitude_{j + 1}"] = float(amplitudes[j])
        s[f"modes/initial_amplitude_{j + 1}"] = float(initial[j])
    return s, initial


def _dual(f: Tensor, lam: Tensor, vec: Tensor, config: MonitorConfig,
          cosmology: Cosmology | None, targets: Tensor | None, run: RunSoFar) -> FLRWDual | None:
    """The `FLRWDual` of every mode (T3–T10), or None without a loss, a heavy-ball optimiser,
    or the velocity ḟ (no recorded outputs the step before)."""
    if cosmology is None or not isinstance(config.loss, PerSampleLoss):
        return None
    velocity = _velocity(run, f, cosmology)
    if velocity is None:
        return None
    return FLRWDual.from_eigen(lam, vec, config.loss, f, cosmology=cosmology, targets=targets,
                               velocity=velocity, step=run.step)


def _dual_scalars(dual: FLRWDual, k: int) -> dict[str, float]:
    """V(φ̄), Ω_φ, slow roll, the stability margin of the stiffest mode, m_k/H of the `k`
    followed modes and how many of all N·C modes are active (T5–T10)."""
    s: dict[str, float] = {}
    s["cosmology/potential"] = float(dual.potential(dual.mean_field))
    s["cosmology/omega_phi"] = dual.vacuum_domination
    s["cosmology/slow_roll_epsilon"], s["cosmology/slow_roll_eta"] = dual.slow_roll
    s["cosmology/stability_margin"] = dual.stability_margin
    for j, value in enumerate(dual.mass_over_hubble[:k].tolist()):
        s[f"modes/mass_over_hubble_{j + 1}"] = value
    s["modes/active"] = float(dual.active_modes())
    return s


def _velocity(run: RunSoFar, f: Tensor, cosmology: Cosmology) -> Tensor | None:
    """ḟ = (f_n − f_{n−1})/sqrt(η) (T2); exactly zero at step 0 (T1); None if unknown."""
    if run.step == 0:
        return torch.zeros_like(f)
    prev = run.previous_outputs
    if prev is None or prev[0] != run.step - 1 or prev[1].shape != f.shape:
        return None
    return (f - prev[1]) / cosmology.time_step


def _forecast(dual: FLRWDual, steps: int,
              reference: Reference) -> tuple[PredictedModes, tuple[int, Tensor]] | None:
    """The dual's forecast `steps` steps ahead as if training were full-batch on the probe
    batch: the exact discrete map of every mode (T10). The amplitudes in the first reading's
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


def _against_last(last: LastReading | None, step: int, f: Tensor, kernel: Tensor,
                  linearised: Linearised | None) -> dict[str, float]:
    """This reading against the previous one: the residual of the linearised outputs (T12),
    the kernel's relative change, and the forecast's relative miss (T10)."""
    s: dict[str, float] = {}
    if linearised is not None:
        ref = linearised.reference_outputs
        s["duality/residual"], s["duality/relative_residual"] = linearisation_residual(
            f, ref, linearised.change)
        moved = float((f - ref).norm())
        s["duality/rounding_floor"] = (linearised.eps * float(f.norm()) / moved if moved > 0
                                       else math.inf)
    if last is None:
        return s
    if last.kernel is not None and last.kernel.shape == kernel.shape:
        s["ntk/kernel_change"] = float(kernel_change(last.kernel, kernel))
    if last.prediction is not None and last.prediction[0] == step and (
            last.outputs.shape == f.shape):
        moved = (f - last.outputs).norm()
        gap = (f.reshape(-1) - last.prediction[1].to(f)).norm()
        s["duality/forecast_residual"] = float(gap / moved) if moved > 0 else math.nan
    return s
