"""Where a reading's results go: a ``SummaryWriter`` (or a log directory for one), a callable,
and the TensorBoard extras (histograms, the custom-scalars layout, figures).

Only a writer's duck-typed methods (``add_scalar``, ``add_histogram``, ``add_figure``,
``add_custom_scalars``) are used, so nothing here imports TensorBoard until a log directory
needs a ``SummaryWriter``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cosmo_optim.dual import FLRWDual
from cosmo_optim.monitor.dashboard import custom_scalar_layout, describe_scalars, verdicts
from cosmo_optim.monitor.figures import figures
from cosmo_optim.monitor.records import Reading

__all__ = ["Sink", "Sinks", "TensorBoardExtras", "write_figures", "write_histograms"]

#: A callable sink: ``sink(metrics, step)``.
Sink = Callable[[dict[str, float], int], None]


def write_histograms(writer: Any, record: Reading, dual: FLRWDual | None, prefix: str) -> None:
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
    writer: Any, history: Sequence[Reading], dual: FLRWDual | None, prefix: str, step: int
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
            describe_scalars(writer)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Close a writer this object created (a given writer stays open)."""
        if self.log_dir is not None and self._writer is not None:
            self._writer.close()
            self._writer = None


class TensorBoardExtras:
    """What a probe adds to a ``SummaryWriter`` besides scalars: the custom-scalars layout
    (once per writer), the probe's histograms and verdicts card (``cosmology/verdicts``, TEXT),
    the card of what failed since the last reading (``cosmology/failures``, TEXT), and the
    figures every `log_figures_every_n_steps` steps and once more at the end."""

    def __init__(self, prefix: str, figures_every: int | None,
                 interval: int | None = None) -> None:
        self.prefix, self.figures_every, self.interval = prefix, figures_every, interval
        self.figures_step = -1  # the step figures were last drawn at
        self._layouts: set[int] = set()

    def figures_due(self, step: int) -> bool:
        """Whether figures are scheduled at `step`."""
        return self.figures_every is not None and step % self.figures_every == 0

    def final_step(self, history: Sequence[Reading]) -> int | None:
        """The last probe's step if the end-of-run figures are still to be drawn, else None
        (always None when figures are off)."""
        if self.figures_every is None or not history:
            return None
        step = history[-1].step
        return None if self.figures_step == step else step

    def write(self, writer: Any, history: Sequence[Reading], dual: FLRWDual | None,
              step: int, failures: str | None = None) -> None:
        """The layout (once), the `failures` card (Markdown, if any), this probe's histograms
        and verdicts card, and the figures when due."""
        if id(writer) not in self._layouts and hasattr(writer, "add_custom_scalars"):
            writer.add_custom_scalars(custom_scalar_layout(self.prefix))
            self._layouts.add(id(writer))
        if failures and hasattr(writer, "add_text"):
            writer.add_text(self.prefix + "cosmology/failures", failures, step)
        if not history or history[-1].step != step:
            return  # a skipped (non-finite) probe has nothing to draw
        write_histograms(writer, history[-1], dual, self.prefix)
        if hasattr(writer, "add_text"):
            previous = history[-2].scalars if len(history) > 1 else None
            card = verdicts(history[-1].scalars, previous=previous, interval=self.interval,
                            max_lr=None if dual is None else float(dual.max_learning_rate()))
            writer.add_text(self.prefix + "cosmology/verdicts", card, step)
        if self.figures_due(step):
            self.write_figures(writer, history, dual, step)

    def write_figures(self, writer: Any, history: Sequence[Reading], dual: FLRWDual | None,
                      step: int) -> None:
        """Draw the figures of the run to the writer at `step`."""
        if write_figures(writer, history, dual, self.prefix, step):
            self.figures_step = step
