"""Where a reading's results go: a ``SummaryWriter`` (or a log directory for one), a callable,
and the TensorBoard extras (histograms, the custom-scalars layout, figures).

Only a writer's duck-typed methods (``add_scalar``, ``add_histogram``, ``add_figure``,
``add_custom_scalars``) are used, so nothing here imports TensorBoard until a log directory
needs a ``SummaryWriter``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from cosmo_optim.dual import FLRWDual
from cosmo_optim.monitor.dashboard import (
    custom_scalar_layout,
    describe_scalars,
    log10_views,
    verdicts,
)
from cosmo_optim.monitor.figures import figures
from cosmo_optim.monitor.records import Reading
from cosmo_optim.monitor.verdict import named

__all__ = [
    "Sink", "Sinks", "TensorBoardExtras", "write_figures", "write_histograms", "write_hparams",
]

#: A callable sink: ``sink(metrics, step)``.
Sink = Callable[[dict[str, float], int], None]


def write_histograms(writer: Any, record: Reading, dual: FLRWDual | None, prefix: str,
                     step: int | None = None) -> None:
    """``ntk/spectrum`` and ``modes/mass_over_hubble`` of one reading (finite values only), at
    `step` (default the reading's)."""
    if not hasattr(writer, "add_histogram"):
        return
    step = record.step if step is None else step
    spectrum = record.eigenvalues[torch.isfinite(record.eigenvalues)]
    if spectrum.numel():
        writer.add_histogram(prefix + "ntk/spectrum", spectrum, step)
    if dual is not None:
        masses = dual.mass_over_hubble
        masses = masses[torch.isfinite(masses)]
        if masses.numel():
            writer.add_histogram(prefix + "modes/mass_over_hubble", masses, step)


def write_figures(
    writer: Any, history: Sequence[Reading], dual: FLRWDual | None, prefix: str, step: int
) -> bool:
    """Draw `figures` of the run to the writer at `step`; whether the writer took figures."""
    if not hasattr(writer, "add_figure"):
        return False
    for tag, fig in figures(history, dual).items():
        writer.add_figure(prefix + tag, fig, step, close=False)
    return True


def write_hparams(writer: Any, params: Mapping[str, Any], metrics: Sequence[str] = ()) -> bool:
    """TensorBoard's HPARAMS record of a run (its experiment, session start and end) with
    `params` (nested dicts flattened with ``/``; values other than numbers, strings and
    booleans as text) and the `metrics` columns it declares, none of them logged here; whether
    the writer took it. TensorBoard keeps a run's first such record, so a framework writing
    its own afterwards (with the same metric's values) keeps these columns."""
    if not hasattr(writer, "_get_file_writer"):
        return False
    from torch.utils.tensorboard.summary import hparams

    flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in _flat(params).items()}
    file_writer = writer._get_file_writer()
    if file_writer is None:
        return False
    for summary in hparams(flat, dict.fromkeys(metrics, 0.0)):
        file_writer.add_summary(summary)
    return True


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


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

            try:
                self._writer = SummaryWriter(self.log_dir)
            except OSError as error:
                raise ValueError(
                    f"Invalid sink: {self.log_dir!r} cannot be a TensorBoard log directory "
                    f"({type(error).__name__}: {error}). Fix: sink= a directory you can "
                    "write to, e.g. 'runs/cosmology'."
                ) from error
        return self._writer

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """Send one reading's scalars to the callable and the writer."""
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
    """What a reading adds to a ``SummaryWriter`` besides its scalars: the custom-scalars
    layout of the charts the run has filled so far (written again when a chart fills), the
    `log10_views` those charts show, the reading's histograms and verdicts card
    (``cosmology/verdicts``, TEXT), the card of what failed since the last reading
    (``cosmology/failures``, TEXT), and the figures every `log_figures_every_n_steps` steps
    and once more at the end. `prefix` is the tags' own; a framework that writes them under
    another (the Hugging Face Trainer's ``train/``) passes its own to `write`."""

    def __init__(self, prefix: str, figures_every: int | None,
                 interval: int | None = None) -> None:
        self.prefix, self.figures_every, self.interval = prefix, figures_every, interval
        self.figures_step = -1  # the step figures were last drawn at
        self._layouts: dict[int, list[str]] = {}  # the charts written to each writer
        self._tags: set[str] = set()  # the tags (without prefix) the run's readings logged

    def figures_due(self, step: int) -> bool:
        """Whether figures are scheduled at `step`."""
        return self.figures_every is not None and step % self.figures_every == 0

    def final_step(self, history: Sequence[Reading]) -> int | None:
        """The last reading's step if the end-of-run figures are still to be drawn, else None
        (always None when figures are off)."""
        if self.figures_every is None or not history:
            return None
        step = history[-1].step
        return None if self.figures_step == step else step

    def write(self, writer: Any, history: Sequence[Reading], dual: FLRWDual | None,
              step: int, failures: str | None = None, *, at: int | None = None,
              prefix: str | None = None) -> None:
        """The layout (when a chart filled), the `failures` card (Markdown, if any), this
        reading's log10 views, histograms and verdicts card, and the figures when due; each at
        step `at` (default `step`) under `prefix` (default the tags' own)."""
        at, prefix = step if at is None else at, self.prefix if prefix is None else prefix
        latest = history[-1] if history and history[-1].step == step else None
        views = {} if latest is None else log10_views(named(latest.scalars))
        if latest is not None and not self._tags:  # a resumed run: every earlier reading
            self._tags.update(t for r in history for t in named(r.scalars))
        self._tags.update([*named(latest.scalars if latest else {}), *views])
        self._layout(writer, prefix)
        if failures and hasattr(writer, "add_text"):
            writer.add_text(prefix + "cosmology/failures", failures, at)
        if latest is None:
            return  # a skipped (non-finite) reading has nothing to draw
        if hasattr(writer, "add_scalar"):
            describe_scalars(writer)
            for tag, value in views.items():
                writer.add_scalar(prefix + tag, value, at)
        write_histograms(writer, latest, dual, prefix, at)
        if hasattr(writer, "add_text"):
            previous = history[-2].scalars if len(history) > 1 else None
            card = verdicts(latest.scalars, previous=previous, interval=self.interval,
                            max_lr=None if dual is None else float(dual.max_learning_rate()))
            writer.add_text(prefix + "cosmology/verdicts", card, at)
        if self.figures_due(step):
            self.write_figures(writer, history, dual, at, prefix=prefix)

    def _layout(self, writer: Any, prefix: str) -> None:
        """The layout of the charts the run's tags fill, when it differs from the last one
        this writer got (TensorBoard shows a run's latest)."""
        if not hasattr(writer, "add_custom_scalars"):
            return
        layout = custom_scalar_layout(prefix, self._tags)
        charts = [title for category in layout.values() for title in category]
        if charts and charts != self._layouts.get(id(writer)):
            writer.add_custom_scalars(layout)
            self._layouts[id(writer)] = charts

    def write_figures(self, writer: Any, history: Sequence[Reading], dual: FLRWDual | None,
                      step: int, *, prefix: str | None = None) -> None:
        """Draw the figures of the run to the writer at `step`."""
        if write_figures(writer, history, dual, self.prefix if prefix is None else prefix,
                         step):
            self.figures_step = history[-1].step if history else step
