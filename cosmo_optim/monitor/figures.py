"""Matplotlib figures of a monitored run (docs/theory.md T5, T7, T10).

Drawn through the object API (``Figure`` + Agg canvas; matplotlib is imported only here and
only when a figure is drawn), with a fixed layout: constrained/tight layout would triple the
drawing time. Each is `WIDTH_PX` × `HEIGHT_PX` pixels (10 × 6 inches at `DPI`), readable on a
screen at TensorBoard's full card width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from cosmo_optim.dual import FLRWDual
from cosmo_optim.dual.causes import RESIDUAL_TOLERANCE
from cosmo_optim.monitor.records import PredictedModes, Reading
from cosmo_optim.monitor.verdict import named

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DPI", "HEIGHT_PX", "WIDTH_PX", "figures"]

#: Resolution of every figure: 1000 × 600 pixels.
DPI, WIDTH_PX, HEIGHT_PX = 100, 1000, 600


def figures(history: Sequence[Reading], dual: FLRWDual | None) -> dict[str, Figure]:
    """``figures/potential`` (V with the field's path; T5, T7; needs the latest `dual`),
    ``figures/spectrum`` (λ_k/N at the first and last reading; T7) and ``figures/modes``
    (amplitudes in the first reading's basis: training, the previous reading's frozen-kernel
    prediction (T12), and the forecasts that stay on the data's scale (T10)).
    Empty before the first reading."""
    history = list(history)
    if not history:
        return {}
    out: dict[str, Figure] = {}
    if dual is not None:
        out["figures/potential"] = _potential(dual, history)
    out["figures/spectrum"] = _spectrum(history, dual.num_samples if dual else None)
    out["figures/modes"] = _modes(history)
    return out


def _figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.9)
    FigureCanvasAgg(fig)
    return fig


def _potential(dual: FLRWDual, history: list[Reading]) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    path = torch.stack([r.mean_field for r in history]).to(dual.outputs.dtype)  # (P, C)
    now = dual.mean_field
    if dual.num_outputs == 1:
        x_path = path[:, 0]
        lo, hi = float(x_path.min()), float(x_path.max())
        pad = max(0.5 * (hi - lo), 0.5, 0.25 * max(abs(lo), abs(hi)))
        grid = torch.linspace(lo - pad, hi + pad, 201, dtype=path.dtype)
        ax.plot(grid, dual.potential(grid), color="C0", label="V(φ) = α_eff ℓ̄(φ) + Λ")
        ax.set_xlabel("mean field φ̄")
        x_now = float(now[0])
    else:  # along the straight line from the first mean field to the current one
        start, direction = path[0], now - path[0]
        norm2 = float(direction.pow(2).sum()) or 1.0
        x_path = (path - start) @ direction / norm2
        grid = torch.linspace(-0.25, 1.25, 201, dtype=path.dtype)
        ax.plot(grid, dual.potential(start + grid[:, None] * direction), color="C0",
                label="V along φ̄_first → φ̄_now")
        ax.set_xlabel("s  (φ̄ = φ̄_first + s (φ̄_now − φ̄_first))")
        x_now = 1.0
    ax.plot(x_path, dual.potential(path), "o-", ms=3, color="C1", alpha=0.7, label="path")
    ax.plot([x_now], [float(dual.potential(now))], "*", ms=12, color="C3", label="now")
    ax.set_ylabel("V (reduced Planck units)")
    ax.set_title(f"Effective potential at step {dual.step}")
    ax.legend(fontsize="small")
    return fig


def _spectrum(history: list[Reading], n: int | None) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    scale = 1.0 / n if n else 1.0
    for record, style in ((history[0], "s--"), (history[-1], "o-")):
        lam = record.eigenvalues * scale
        ks = torch.arange(1, lam.numel() + 1)
        keep = lam > 0
        ax.semilogy(ks[keep], lam[keep], style, label=f"step {record.step}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # modes are numbered 1, 2, ...
    ax.set_xlabel("mode k")
    ax.set_ylabel("λ_k / N" if n else "λ_k")
    ax.set_title("NTK spectrum")
    ax.legend(fontsize="small")
    return fig


def _modes(history: list[Reading]) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    steps = [r.step for r in history]
    actual = torch.stack([r.initial_amplitudes for r in history])  # (P, k)
    for j in range(actual.shape[1]):
        ax.plot(steps, actual[:, j], "o-", ms=3, color=f"C{j}", label=f"f̃_{j + 1}")
    linear = [(r.step, r.linearised_amplitudes) for r in history
              if r.linearised_amplitudes is not None]
    for j in range(actual.shape[1] if linear else 0):
        ax.plot([s for s, _ in linear], [float(a[j]) for _, a in linear], "x", ms=8,
                mew=1.5, color=f"C{j}")
    shown = [actual] + [a.reshape(1, -1) for _, a in linear]
    lo, hi = float(torch.cat(shown).min()), float(torch.cat(shown).max())
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    forecasts, drawn = _readable_forecasts(history, lo - span, hi + span)
    for prediction in drawn:
        for j in range(prediction.amplitudes.shape[1]):
            ax.plot(prediction.steps, prediction.amplitudes[:, j], ":", color=f"C{j}")
    ax.set_ylim(lo - 0.1 * span, hi + 0.1 * span)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("amplitude (basis at first reading)")
    if linear:
        ax.plot([], [], "x", color="gray", label="frozen-kernel prediction (T12)")
    if drawn:
        ax.plot([], [], ":", color="gray", label="forecast, full batch on the probe batch (T10)")
    ax.set_title(_modes_title(history, bool(linear), forecasts, len(drawn)), fontsize="medium")
    ax.legend(fontsize="small", ncol=2)
    return fig


def _readable_forecasts(history: list[Reading], lo: float,
                        hi: float) -> tuple[int, list[PredictedModes]]:
    """How many forecasts the run made, and those worth drawing: on the data's scale, and
    (where the next reading judged it) missing by less than half the motion: under
    mini-batches a forecast misses by design, and a wall of them would hide the data."""
    made = [(i, r.prediction) for i, r in enumerate(history) if r.prediction is not None]
    drawn, judged_ok = [], True
    for i, prediction in made:
        judged = named(history[i + 1].scalars).get("duality/forecast_residual") if (
            i + 1 < len(history)) else None
        judged_ok = judged_ok if judged is None else judged <= 0.5
        amplitudes = prediction.amplitudes
        if judged_ok and lo <= float(amplitudes.min()) and float(amplitudes.max()) <= hi:
            drawn.append(prediction)
    return len(made), drawn


def _modes_title(history: list[Reading], linear: bool, forecasts: int, drawn: int) -> str:
    """The verdict of the run so far, what the figure shows, and which forecasts it leaves
    out and why."""
    residuals = [v for r in history if (v := named(r.scalars).get(
        "duality/relative_residual")) is not None and v == v]
    title = "Modes: training (lines)"
    if linear:
        title += " vs the previous reading's frozen kernel (×, T12)"
    if residuals:
        holds = sum(v <= RESIDUAL_TOLERANCE for v in residuals)
        title += (f"\nthe dual holds at {holds} of {len(residuals)} readings (relative residual "
                  f"≤ {RESIDUAL_TOLERANCE:g}; latest {residuals[-1]:.2g}, over all N·C outputs)")
    if forecasts > drawn:
        title += (f"\n{forecasts - drawn} of {forecasts} forecasts not drawn: off this scale, or "
                  "missing by design (they assume full-batch training on the probe batch, T10)")
    elif not linear and not forecasts:
        title += "; predictions need two readings"
    return title
