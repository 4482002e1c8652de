"""The figures of a duality check (`DualityReport.plot`): the potential with the trained and
predicted mean field, the mode amplitudes, and the NTK spectrum and drift (docs/theory.md T5,
T7, T4). Matplotlib's object API (`Figure`), imported when a figure is drawn; never pyplot.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cosmo_optim.dual.flrw import FLRWDual

__all__ = ["modes_figure", "potential_figure", "spectrum_figure"]


def potential_figure(dual: FLRWDual, actual: np.ndarray, predicted: np.ndarray) -> Any:
    """V(φ) with the trained φ̄_n and the ODE's on it (one output; T5)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    act, pre = actual, predicted
    lo, hi = min(act.min(), pre.min()), max(act.max(), pre.max())
    pad = 0.3 * (hi - lo) + 1e-3
    phi, pot = dual.potential_samples(lo - pad, hi + pad)
    ax.plot(phi, pot, color="0.4", label="V(φ) = α ℓ̄(φ) + Λ")
    ax.plot(act, dual.potential(torch.from_numpy(act)).numpy(), "o", ms=3, label="trained φ̄")
    ax.plot(pre, dual.potential(torch.from_numpy(pre)).numpy(), "-", lw=1.5, label="ODE")
    ax.set(xlabel="φ̄ (mean output)", ylabel="V")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def modes_figure(dual: FLRWDual, steps: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                 modes: int) -> Any:
    """The first `modes` mode amplitudes u_kᵀ f / sqrt(N), trained and predicted (T7)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    scale = math.sqrt(dual.num_samples)
    for k in range(min(modes, dual.eigenvalues.numel())):
        (line,) = ax.plot(steps, actual[:, k] / scale, lw=2, alpha=0.5,
                          label=f"mode {k} trained")
        ax.plot(steps, predicted[:, k] / scale, "--", color=line.get_color(),
                label=f"mode {k} ODE")
    ax.set(xlabel="step", ylabel="u_kᵀ f / sqrt(N)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def spectrum_figure(dual: FLRWDual, probe_steps: np.ndarray, drift: np.ndarray) -> Any:
    """The NTK spectrum at the start and the kernel's drift at every probe (T4, T7)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    lam = dual.eigenvalues
    ax1.semilogy(np.arange(lam.numel()), lam.clamp(min=1e-300).numpy(), "o")
    ax1.set(xlabel="mode k", ylabel="λ_k", title="NTK spectrum at start")
    ax2.plot(probe_steps, drift, "o-")
    ax2.set(xlabel="step", ylabel="kernel distance to start", title="NTK drift")
    fig.tight_layout()
    return fig
