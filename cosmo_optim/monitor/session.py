"""`MonitorSession`: what every framework adaptor does around a `CosmologyTracker`.

Framework-free; the Lightning and Hugging Face callbacks hand it the framework's pieces (a
broadcast, whether this is rank 0, the loggers and how to get a ``SummaryWriter`` from one)
and keep only the hooks. Four jobs: the probe batch taken on rank 0 and broadcast, the
writes made on rank 0 only (tag descriptions before the framework writes our scalars, the
extras after), the end-of-run figures, and a checkpoint's state held until the tracker
exists (a resume restores callbacks before training builds the tracker).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.dashboard import describe_scalars
from cosmo_optim.monitor.images import figures_dropped_warning, image_writer
from cosmo_optim.monitor.tracker import CosmologyTracker

__all__ = ["MonitorSession"]


class MonitorSession:
    """One run of a monitor inside a framework (see the module docstring).

    Args:
        owner: the adaptor's class name, for messages (``"CosmologyMonitor"``).
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.tracker: CosmologyTracker | None = None
        self.pending: Mapping[str, Any] | None = None  # a checkpoint's state, until `start`
        self.writers: list[Any] = []  # the latest `targets`, kept for the end of the run
        self.figures_warned = False  # the dropped-figures warning, once per run

    def start(self, model: nn.Module, config: MonitorConfig, *,
              probe_batch: Any = None) -> CosmologyTracker:
        """Build the tracker (its probe interval set) and restore a pending state."""
        self.tracker = CosmologyTracker.from_config(model, config, probe_batch=probe_batch)
        if self.pending is not None:
            self.tracker.load_state_dict(self.pending)
            self.pending = None
        return self.tracker

    def running(self) -> CosmologyTracker:
        """The tracker; a RuntimeError naming the fix before `start`."""
        if self.tracker is None:
            raise RuntimeError(
                f"{self.owner} used before training started; add it to the Trainer's "
                "callbacks=[...]."
            )
        return self.tracker

    # ----- job 1: one probe batch for every rank ---------------------------------------------
    @staticmethod
    def shared_probe(rank0: bool, take: Callable[[], Any],
                     broadcast: Callable[[Any], Any]) -> Any:
        """Rank 0's probe batch on every rank: `take` runs on rank 0 only (a collator may draw
        random numbers, a data loader shuffles per rank), `broadcast` sends it."""
        return broadcast(take() if rank0 else None)

    # ----- job 2: rank-0 writes --------------------------------------------------------------
    def targets(self, loggers: Iterable[Any], summary_writer: Callable[[Any], Any], *,
                nothing: str = "any logger (none is configured)") -> list[Any]:
        """Where the extras go: each logger's ``SummaryWriter`` (`summary_writer(logger)`,
        None for other loggers: everything) or image API (W&B, MLflow: figures). With figures
        on, one warning per run naming the loggers that take none (`nothing` if none does)."""
        writers, dropped = [], []
        for logger in loggers:
            writer = summary_writer(logger)
            writer = writer if writer is not None else image_writer(logger)
            writers += [writer] if writer is not None else []
            dropped += [] if writer is not None else [type(logger).__name__]
        self.writers = writers or self.writers
        if self.running().config.log_figures_every_n_steps is not None and not (
                self.figures_warned) and (dropped or not self.writers):
            self.figures_warned = True
            names = dropped or [nothing]
            warnings.warn(figures_dropped_warning(self.owner, names), UserWarning, stacklevel=3)
        return writers

    @staticmethod
    def before_scalars(writers: Iterable[Any]) -> None:
        """Before the framework writes a probe's scalars: each tag's description with units
        (`cosmo_optim.monitor.dashboard.describe_scalars`, once per writer)."""
        for writer in writers:
            if hasattr(writer, "add_scalar"):
                describe_scalars(writer)

    def after_scalars(self, writers: Iterable[Any], step: int) -> None:
        """After them: the layout (once), histograms, verdicts card and figures when due."""
        for writer in writers:
            self.running().write_extras(writer, step)

    # ----- job 3: end-of-run figures ---------------------------------------------------------
    def finish(self) -> list[Any]:
        """Draw the run's figures once more at its last probe (if enabled and not drawn
        there yet) to the latest writers; returns those writers."""
        tracker = self.running()
        step = tracker.final_figures_step()
        if step is not None:
            for writer in self.writers:
                tracker.write_figures(writer, step)
        tracker.detach()
        return self.writers

    # ----- job 4: state across a resume ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The tracker's state (or the pending one, before the tracker exists)."""
        if self.tracker is not None:
            return self.tracker.state_dict()
        return dict(self.pending or {})

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore now, or at `start` if the tracker does not exist yet."""
        if not state:
            return
        if self.tracker is not None:
            self.tracker.load_state_dict(state)
        else:
            self.pending = state
