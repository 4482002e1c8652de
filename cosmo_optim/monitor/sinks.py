"""Where a probe's results go: a ``SummaryWriter`` (or a log directory for one), a callable,
and the TensorBoard extras (histograms, the custom-scalars layout, figures).

Only a writer's duck-typed methods (``add_scalar``, ``add_histogram``, ``add_figure``,
``add_custom_scalars``) are used, so nothing here imports TensorBoard until a log directory
needs a ``SummaryWriter``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cosmo_optim.dual import FLRWDual
from cosmo_optim.monitor.figures import figures
from cosmo_optim.monitor.records import ProbeRecord

__all__ = ["Sink", "Sinks", "custom_scalar_layout", "write_figures", "write_histograms"]

#: A callable sink: ``sink(metrics, step)``.
Sink = Callable[[dict[str, float], int], None]


def custom_scalar_layout(prefix: str = "") -> dict[str, Any]:
    """One TensorBoard custom-scalars category grouping per-mode tags into multi-line charts."""
    p = re.escape(prefix)
    return {
        "cosmo-optim": {
            "NTK hierarchy λ_k/λ_1": ["Multiline", [rf"^{p}ntk/ratio_\d+$"]],
            "mode amplitudes f̃ = Uᵀf": ["Multiline", [rf"^{p}modes/amplitude_\d+$"]],
            "mode amplitudes (basis at first probe)": [
                "Multiline", [rf"^{p}modes/initial_amplitude_\d+$"]
            ],
            "mode masses m_k/H": ["Multiline", [rf"^{p}modes/mass_over_hubble_\d+$"]],
            "background": [
                "Multiline",
                [rf"^{p}cosmology/(omega_phi|slow_roll_epsilon|slow_roll_eta|stability_margin)$"],
            ],
            "NTK drift": ["Multiline", [rf"^{p}ntk/(kernel_distance|basis_rotation)$"]],
        }
    }


def write_histograms(writer: Any, record: ProbeRecord, dual: FLRWDual | None, prefix: str) -> None:
    """``ntk/spectrum`` and ``modes/mass_over_hubble`` of one probe (finite values only)."""
    if not hasattr(writer, "add_histogram"):
        return
    spectrum = record.eigenvalues[torch.isfinite(record.eigenvalues)]
    if spectrum.numel():
        writer.add_histogram(prefix + "ntk/spectrum", spectrum, record.step)
    if dual is not None:
        masses = dual.mass_over_hubble
        masses = masses[torch.isfinite(masses)]
        if masses.numel():
            writer.add_histogram(prefix + "modes/mass_over_hubble", masses, record.step)


def write_figures(
    writer: Any, history: Sequence[ProbeRecord], dual: FLRWDual | None, prefix: str, step: int
) -> bool:
    """Draw `figures` of the run to the writer at `step`; whether the writer took figures."""
    if not hasattr(writer, "add_figure"):
        return False
    for tag, fig in figures(history, dual).items():
        writer.add_figure(prefix + tag, fig, step, close=False)
    return True


class Sinks:
    """The tracker's own outputs: a writer (given, or created lazily in a log directory) and/or
    a callable. `sink` is a ``SummaryWriter``-like object, a directory, a callable or None."""

    def __init__(self, sink: Any) -> None:
        self._writer: Any = None
        self.callback: Sink | None = None
        self.log_dir: str | None = None
        if isinstance(sink, (str, os.PathLike)):
            self.log_dir = os.fspath(sink)
        elif sink is not None and hasattr(sink, "add_scalar"):
            self._writer = sink
        elif callable(sink):
            self.callback = sink
        elif sink is not None:
            raise ValueError(
                f"Invalid sink: {sink!r}; give a SummaryWriter, a log directory, a callable "
                "sink(metrics, step), or None."
            )

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` (created on first use from a log directory), or None."""
        if self._writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.log_dir)
        return self._writer

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """Send one probe's scalars to the callable and the writer."""
        if self.callback is not None:
            self.callback(metrics, step)
        writer = self.writer
        if writer is not None:
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Close a writer this object created (a given writer stays open)."""
        if self.log_dir is not None and self._writer is not None:
            self._writer.close()
            self._writer = None
