"""`check_duality`: does a model train like its FLRW dual? (T4–T10).

The model is trained full-batch with momentum SGD on the probe inputs; the kernel at the
start gives the dual (`FLRWDual`) and its predictions (`predict_trajectory`, continuum and
discrete). The report compares them with the actual trajectory, mode by mode, and says why
the duality holds or not: kernel drift (the lazy limit, T4), Ω_φ (vacuum domination, T6),
stability (T10) and the size of the deviations (the paper's Fig. 3 and 5 metric).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual, _as_cosmology
from cosmo_optim.losses import per_sample_loss
from cosmo_optim.predict import Prediction, predict_trajectory
from cosmo_optim.spectrum import flat_kernel

__all__ = ["DualityReport", "check_duality"]


@dataclass
class DualityReport:
    """What `check_duality` measured: actual vs predicted trajectories and the verdict.

    Deviations are relative to the actual change of the mean field, |φ̄_T − φ̄_0| (paper
    Fig. 3, 5): `mean_field_end` = |φ̄_pred(T) − φ̄(T)|/|φ̄_T − φ̄_0|, `mean_field_max` the same
    maximised over the steps; `mode_end`/`mode_max` per kernel mode k use the amplitudes
    u_kᵀ f divided by sqrt(N) (so the uniform mode's amplitude is φ̄); `outputs_end` is
    |f_pred(T) − f(T)|/|f(T) − f(0)| for the whole output vector. Keys ending in `_discrete`
    compare with the exact discrete map (T10) instead of the ODE.
    """

    dual: FLRWDual
    steps: int
    actual_outputs: np.ndarray
    continuum: Prediction
    discrete: Prediction | None
    probe_steps: np.ndarray
    ntk_drift: np.ndarray
    alpha_eff: np.ndarray
    vacuum_domination: np.ndarray
    deviations: dict[str, Any]
    passed: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def cosmology(self) -> Cosmology:
        return self.dual.cosmology

    @property
    def actual_mean_field(self) -> np.ndarray:
        """φ̄_n, shape (steps + 1, C)."""
        return np.asarray(self.actual_outputs.mean(axis=1))

    @property
    def actual_modes(self) -> np.ndarray:
        """Mode amplitudes u_kᵀ f_n on the initial eigenvectors, shape (steps + 1, k)."""
        flat = self.actual_outputs.reshape(self.steps + 1, -1)
        return np.asarray(flat @ self.dual.eigenvectors.numpy())

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (JSON-serialisable)."""
        d = self.dual
        return {
            "passed": self.passed, "reasons": list(self.reasons), "notes": list(self.notes),
            "steps": self.steps, "initial": d.summary(),
            "efolds": self.cosmology.efolds(self.steps),
            "ntk_drift_max": float(self.ntk_drift.max()),
            "alpha_eff_start_end": [float(self.alpha_eff[0]), float(self.alpha_eff[-1])],
            "vacuum_domination_max": float(np.nanmax(self.vacuum_domination)),
            "eigenvalues": d.eigenvalues.tolist(), "uniform_overlaps": d.uniform_overlaps.tolist(),
            "mode_classes": d.mode_classes(self.steps),
            "deviations": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for k, v in self.deviations.items()},
        }

    def to_markdown(self, modes: int = 4) -> str:
        """A short human-readable report (Markdown)."""
        d, c, dev = self.dual, self.cosmology, self.deviations
        eps, eta_v = d.slow_roll
        mf = d.mean_field_mode()
        lines = [
            f"## FLRW duality check: {'holds' if self.passed else 'does not hold'}",
            "",
            *(f"- {r}" for r in self.reasons or ["all checks passed"]),
            *(f"- note: {n}" for n in self.notes),
            "",
            "| quantity | value |", "|---|---|",
            f"| lr η, momentum β | {c.lr:.4g}, {c.momentum:.4g} |",
            f"| Hubble rate H, vacuum energy Λ | {c.hubble_rate:.4g}, {c.vacuum_energy:.4g} |",
            f"| Hubble time (steps), e-folds trained | {c.hubble_time_steps:.4g}, "
            f"{c.efolds(self.steps):.4g} |",
            f"| N probe inputs × C outputs | {d.num_samples} × {d.num_outputs} |",
            f"| α_eff = λ₁/N, mean kernel entry | {d.alpha_eff:.4g}, {d.mean_kernel_entry:.4g} |",
            f"| mean-field mode (overlap) | {mf if mf is not None else 'none'} "
            f"({float(d.uniform_overlaps.max()):.3f}) |",
            f"| Ω_φ at start, max | {d.vacuum_domination:.3g}, "
            f"{float(np.nanmax(self.vacuum_domination)):.3g} |",
            f"| slow roll ε_V, η_V | {eps:.3g}, {eta_v:.3g} |",
            f"| stability margin ηκ/2(1+β) | {d.stability_margin:.3g} |",
            f"| NTK drift (max kernel distance) | {float(self.ntk_drift.max()):.3g} |",
            f"| α_eff start → end | {self.alpha_eff[0]:.4g} → {self.alpha_eff[-1]:.4g} |",
            f"| mean field: end, max deviation (ODE) | {dev['mean_field_end']:.3g}, "
            f"{dev['mean_field_max']:.3g} |",
            f"| mean field: end deviation (discrete map) | "
            f"{dev.get('mean_field_end_discrete', math.nan):.3g} |",
            f"| whole output vector: end deviation | {dev['outputs_end']:.3g} |",
            "",
            "| mode | λ_k | overlap | m_k/H | class | end dev | max dev |",
            "|---|---|---|---|---|---|---|",
        ]
        classes = d.mode_classes(self.steps)
        for k in range(min(modes, d.eigenvalues.numel())):
            lines.append(
                f"| {k} | {float(d.eigenvalues[k]):.4g} | {float(d.uniform_overlaps[k]):.3f} | "
                f"{float(d.mass_over_hubble[k]):.3g} | {classes[k]} | "
                f"{dev['mode_end'][k]:.3g} | {dev['mode_max'][k]:.3g} |"
            )
        return "\n".join(lines) + "\n"

    def plot(self, modes: int = 3) -> dict[str, Any]:
        """Figures (matplotlib object API, no pyplot): "potential", "modes", "spectrum"."""
        from matplotlib.figure import Figure

        d, steps = self.dual, np.arange(self.steps + 1)
        figs: dict[str, Any] = {}
        if d.num_outputs == 1:
            fig = Figure(figsize=(5, 3.5))
            ax = fig.add_subplot()
            act, pre = self.actual_mean_field[:, 0], self.continuum.mean_field[:, 0]
            lo, hi = min(act.min(), pre.min()), max(act.max(), pre.max())
            pad = 0.3 * (hi - lo) + 1e-3
            phi, pot = d.potential_samples(lo - pad, hi + pad)
            ax.plot(phi, pot, color="0.4", label="V(φ) = α ℓ̄(φ) + Λ")
            ax.plot(act, d.potential(torch.from_numpy(act)).numpy(), "o", ms=3, label="trained φ̄")
            ax.plot(pre, d.potential(torch.from_numpy(pre)).numpy(), "-", lw=1.5, label="ODE")
            ax.set(xlabel="φ̄ (mean output)", ylabel="V")
            ax.legend(fontsize=8)
            fig.tight_layout()
            figs["potential"] = fig
        fig = Figure(figsize=(6, 3.5))
        ax = fig.add_subplot()
        scale = math.sqrt(d.num_samples)
        for k in range(min(modes, d.eigenvalues.numel())):
            (line,) = ax.plot(steps, self.actual_modes[:, k] / scale, lw=2, alpha=0.5,
                              label=f"mode {k} trained")
            ax.plot(steps, self.continuum.modes[:, k] / scale, "--",  # type: ignore[index]
                    color=line.get_color(), label=f"mode {k} ODE")
        ax.set(xlabel="step", ylabel="u_kᵀ f / sqrt(N)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        figs["modes"] = fig
        fig = Figure(figsize=(7, 3))
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        ax1.semilogy(np.arange(d.eigenvalues.numel()), d.eigenvalues.clamp(min=1e-300).numpy(), "o")
        ax1.set(xlabel="mode k", ylabel="λ_k", title="NTK spectrum at start")
        ax2.plot(self.probe_steps, self.ntk_drift, "o-")
        ax2.set(xlabel="step", ylabel="kernel distance to start", title="NTK drift")
        fig.tight_layout()
        figs["spectrum"] = fig
        return figs


def _default_ntk(model: nn.Module, inputs: Tensor) -> Tensor:
    from cosmo_optim.ntk import empirical_ntk

    return empirical_ntk(model, inputs, output="full")


def _kernel_distance(k0: Tensor, k1: Tensor) -> float:
    from cosmo_optim.spectrum import kernel_distance

    return float(kernel_distance(k0, k1))


def check_duality(
    model: nn.Module,
    loss: Any,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    cosmology: Cosmology | torch.optim.Optimizer,
    steps: int,
    probe_every: int | None = None,
    k: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    integrator: str = "dop853",
    drift_tolerance: float = 0.1,
    vacuum_tolerance: float = 0.1,
    deviation_tolerance: float = 0.05,
    ntk: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> DualityReport:
    """Train a deep copy of `model` for `steps` full-batch steps and compare with its FLRW dual.

    The user's model, its gradients and the global RNG state are untouched. The kernel is
    the full output-space NTK (`ntk(model, inputs)`, default `empirical_ntk(...,
    output="full")`), recomputed every `probe_every` steps (default steps/10) to measure its
    drift (kernel distance, Fort et al. 2020) and α_eff. `dtype=torch.float64` trains and
    predicts in double precision. The verdict fails when the kernel drifts more than
    `drift_tolerance` or α_eff changes by more than that fraction (outside the lazy
    regime, T4), Ω_φ exceeds `vacuum_tolerance` (T6),
    the map is unstable (T10), or the mean field's end deviation exceeds
    `deviation_tolerance` (see `DualityReport` for the definitions).

    Example:
        >>> from cosmo_optim import Cosmology, PolynomialPotentialLoss
        >>> net = torch.nn.Linear(1, 1).double()
        >>> _ = net.weight.data.zero_(), net.bias.data.zero_()  # f = 0, NTK = 2 everywhere
        >>> report = check_duality(net, PolynomialPotentialLoss(1.0, 2), torch.ones(4, 1).double(),
        ...                        cosmology=Cosmology(0.001, 0.5), steps=50, progress=False)
        >>> report.passed, report.deviations["mean_field_end_discrete"] < 1e-10
        (True, True)
    """
    c = _as_cosmology(cosmology)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r}; it must be a positive integer.")
    steps = int(steps)
    probe_every = max(1, steps // 10) if probe_every is None else int(probe_every)
    if probe_every < 1:
        raise ValueError(f"Invalid probe_every: {probe_every!r}; it must be ≥ 1 step.")
    if targets is not None and targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"Mismatched shapes: inputs {tuple(inputs.shape)} and targets "
            f"{tuple(targets.shape)} need the same number of samples (dim 0)."
        )
    kernel_of = ntk or _default_ntk
    ell = per_sample_loss(loss)
    with torch.random.fork_rng(devices=[]):
        net = copy.deepcopy(model)
        if dtype is not None:
            net = net.to(dtype)
            inputs = inputs.to(dtype) if inputs.is_floating_point() else inputs
            if targets is not None and targets.is_floating_point():
                targets = targets.to(dtype)
        with torch.no_grad():
            f0 = net(inputs).detach()
        if not torch.isfinite(f0).all():
            raise ValueError("The model's outputs at initialisation contain NaN or inf; "
                             "check the inputs and the initialisation.")
        n, nc = f0.shape[0], f0[0].numel()
        k0 = flat_kernel(kernel_of(net, inputs).detach())
        dual = FLRWDual.from_kernel(k0, ell, f0, cosmology=c, targets=targets, k=k)
        opt = torch.optim.SGD(net.parameters(), lr=c.lr, momentum=c.momentum)
        outs = [f0]
        probe_steps, drift, alphas = [0], [0.0], [dual.alpha_eff]
        bar = _progress(steps, progress)
        for step in range(1, steps + 1):
            opt.zero_grad()
            ell.training_loss(net(inputs), targets).backward()
            opt.step()
            with torch.no_grad():
                out = net(inputs).detach()
            if not torch.isfinite(out).all():
                raise ValueError(
                    f"Training diverged: NaN or inf outputs at step {step} (stability margin "
                    f"{dual.stability_margin:.3g}, ≥ 1 is unstable by T10); lower the lr."
                )
            outs.append(out)
            if step % probe_every == 0 or step == steps:
                kn = flat_kernel(kernel_of(net, inputs).detach())
                probe_steps.append(step)
                drift.append(_kernel_distance(k0, kn))
                alphas.append(float(torch.linalg.eigvalsh(0.5 * (kn + kn.T))[-1]) / n)
            bar(1)
        bar(0, close=True)
    continuum = predict_trajectory(dual, steps, integrator=integrator)
    notes: list[str] = []
    try:
        discrete: Prediction | None = predict_trajectory(dual, steps, method="discrete")
    except ValueError as err:
        discrete, notes = None, [str(err)]
    actual = torch.stack(outs).reshape(steps + 1, n, nc).to(torch.float64).numpy()
    deviations = _deviations(dual, actual, continuum, discrete)
    omega = _vacuum_domination(dual, actual)
    reasons = _reasons(dual, deviations, np.array(drift), np.array(alphas), omega,
                       drift_tolerance, vacuum_tolerance, deviation_tolerance)
    if dual.mean_field_mode() is None:
        notes.append(
            f"no kernel mode is aligned with the uniform direction (best overlap "
            f"{float(dual.uniform_overlaps.max()):.2f} ≤ 0.71): the mean field is not a mode (T7)"
        )
    return DualityReport(dual, steps, actual, continuum, discrete, np.array(probe_steps),
                         np.array(drift), np.array(alphas), omega, deviations,
                         not reasons, reasons, notes)


def _progress(total: int, enabled: bool) -> Callable[..., None]:
    """A tqdm bar when installed and enabled, else a no-op; call bar(n) and bar(0, close=True)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return lambda n, close=False: None
    bar = tqdm(total=total, desc="check_duality", leave=False)

    def update(n: int, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()

    return update


def _deviations(dual: FLRWDual, actual: np.ndarray, continuum: Prediction,
                discrete: Prediction | None) -> dict[str, Any]:
    """Relative deviations of the predictions (`DualityReport` docstring)."""
    mean = actual.mean(axis=1)
    change = float(np.linalg.norm(mean[-1] - mean[0]))
    total = float(np.linalg.norm(actual[-1] - actual[0]))
    u = dual.eigenvectors.to(torch.float64).numpy()
    modes = actual.reshape(len(actual), -1) @ u
    scale = math.sqrt(dual.num_samples) * change
    out: dict[str, Any] = {"mean_field_change": change}
    for name, pred in (("", continuum), ("_discrete", discrete)):
        if pred is None:
            continue
        gap = np.linalg.norm(pred.mean_field - mean, axis=1) / change
        mode_gap = np.abs(pred.modes - modes) / scale
        out[f"mean_field_end{name}"] = float(gap[-1])
        out[f"mean_field_max{name}"] = float(gap.max())
        out[f"mode_end{name}"] = mode_gap[-1]
        out[f"mode_max{name}"] = mode_gap.max(axis=0)
        out[f"outputs_end{name}"] = float(
            np.linalg.norm(pred.outputs[-1] - actual[-1]) / total  # type: ignore[index]
        )
    return out


def _vacuum_domination(dual: FLRWDual, actual: np.ndarray) -> np.ndarray:
    """Ω_φ,n = (½ |φ̄̇_n|² + α_eff ℓ̄(φ̄_n))/Λ along the trained trajectory (T6)."""
    mean = torch.from_numpy(actual.mean(axis=1))
    speed = torch.zeros(len(mean), dtype=torch.float64)
    speed[1:] = (mean[1:] - mean[:-1]).pow(2).sum(dim=1) / dual.cosmology.lr
    phi = mean if dual.num_outputs > 1 else mean[:, 0]
    energy = dual.potential(phi).to(torch.float64) - dual.vacuum_energy
    return ((0.5 * speed + energy) / dual.vacuum_energy).numpy()


def _reasons(dual: FLRWDual, dev: dict[str, Any], drift: np.ndarray, alphas: np.ndarray,
             omega: np.ndarray, drift_tol: float, vacuum_tol: float, dev_tol: float) -> list[str]:
    reasons = []
    if drift.max() > drift_tol:
        reasons.append(f"NTK drifted {drift.max():.0%} (kernel distance > {drift_tol:g}): "
                       "outside the lazy regime")
    # The kernel distance ignores the kernel's scale (always 0 for N = 1): check α_eff too.
    alpha_change = float(np.abs(alphas / alphas[0] - 1).max())
    if alpha_change > drift_tol:
        reasons.append(f"α_eff changed by {alpha_change:.0%} (> {drift_tol:.0%}): "
                       "outside the lazy regime")
    if np.nanmax(omega) > vacuum_tol:
        reasons.append(f"Ω_φ reached {np.nanmax(omega):.2g} (> {vacuum_tol:g}): "
                       "not vacuum dominated")
    if dual.stability_margin >= 1:
        reasons.append(f"stability margin {dual.stability_margin:.3g} ≥ 1: η κ ≥ 2(1 + β), "
                       "the discrete map is unstable")
    if not dev["mean_field_change"] > 0:
        reasons.append("the mean field did not move: relative deviations are undefined")
    elif dev["mean_field_end"] > dev_tol:
        reasons.append(f"mean field ended {dev['mean_field_end']:.1%} of its change away from "
                       f"the prediction (> {dev_tol:.0%})")
    return reasons
