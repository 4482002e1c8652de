"""`MonitorSession`: what every framework adaptor does around a `CosmologyTracker`.

Framework-free; the Lightning and Hugging Face callbacks hand it the framework's pieces (a
broadcast, whether this is rank 0, the loggers and how to get a ``SummaryWriter`` from one)
and keep only the hooks. Four jobs: the probe batch taken on rank 0 and broadcast, the
writes made on rank 0 only (tag descriptions before the framework writes our scalars, the
extras after), the end-of-run figures, and a checkpoint's state held until the tracker
exists (a resume restores callbacks before training builds the tracker).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.dashboard import describe_scalars
from cosmo_optim.monitor.images import figures_dropped_warning, image_writer
from cosmo_optim.monitor.records import from_json
from cosmo_optim.monitor.state import dropped_state_warning
from cosmo_optim.monitor.tags import SCALAR_TAGS
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
            _restore(self.tracker, self.pending)
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

    def first_probe(self, global_step: int) -> dict[str, float] | None:
        """The initial state's probe (step 0) when training starts from scratch, once; on a
        resume, the weights of a reading the checkpoint was saved at (`resume_from`)."""
        tracker = self.running()
        if global_step > 0:
            tracker.resume_from(global_step)
        return tracker.step(0) if global_step == 0 and tracker.last_step < 0 else None

    # ----- job 1: one probe batch for every rank ---------------------------------------------
    @staticmethod
    def shared_probe(rank0: bool, take: Callable[[], Any],
                     broadcast: Callable[[Any], Any] | None = None) -> Any:
        """Rank 0's probe batch on every rank: `take` runs on rank 0 only (a collator may draw
        random numbers, a data loader shuffles per rank), `broadcast` sends it (default:
        ``torch.distributed``'s, when a process group is initialised)."""
        probe = take() if rank0 else None
        if broadcast is not None:
            return broadcast(probe)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return probe
        shared = [probe]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]

    def set_probe(self, probe: Sequence[Any], train_batch_size: int) -> None:
        """Give the tracker its probe batch (on the CPU) and the samples per optimiser step
        (for the probe's cost warning)."""
        tracker = self.running()
        tracker.set_probe(tuple(t.cpu() if t is not None else None for t in probe))
        tracker.config = dataclasses.replace(tracker.config, train_batch_size=train_batch_size)

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

    def write(self, writers: Callable[[], Iterable[Any]], metrics: dict[str, float] | None,
              step: int, log: Callable[[dict[str, float]], Any]) -> None:
        """A probe's output: each tag's description with units before the framework's `log`
        writes its scalars (`cosmo_optim.monitor.dashboard.describe_scalars`, once per
        writer: TensorBoard keeps a tag's first metadata), then to each of `writers()` the
        layout (once), histograms, verdicts and failures cards, and figures when due. Nothing
        without `metrics`. After the run has started an error here (a logger, a writer that
        cannot be opened, a figure) loses this write only (`ReadingGuard.write`)."""
        if metrics:
            self.running().guard.write(step, lambda: self._write(writers(), metrics, step, log))

    def _write(self, writers: Iterable[Any], metrics: dict[str, float], step: int,
               log: Callable[[dict[str, float]], Any]) -> None:
        writers = list(writers)
        for writer in writers:
            if hasattr(writer, "add_scalar"):
                describe_scalars(writer)
        log(metrics)
        for writer in writers:
            self.running().write_extras(writer, step)

    def hparams(self) -> dict[str, Any]:
        """The physics hyperparameters of the run (T3) and the monitor's settings, by tag:
        what an adaptor writes with the framework's own hyperparameters."""
        tracker = self.running()
        params: dict[str, Any] = {
            "cosmo_optim/probe_size": tracker.probe_size, "cosmo_optim/top_k": tracker.top_k,
            f"cosmo_optim/{tracker.config.interval_name}": tracker.every_n_steps,
        }
        cosmology = tracker.cosmology()
        if cosmology is not None:
            params.update({f"cosmology/{name}": getattr(cosmology, name) for name in (
                "lr", "momentum", "time_step", "hubble_rate", "vacuum_energy",
                "hubble_time_steps")})
        return {tracker.prefix + k: v for k, v in params.items()}

    # ----- job 3: end-of-run figures ---------------------------------------------------------
    def finish(self, refresh: Callable[[], Any] | None = None) -> list[Any]:
        """Draw the run's figures once more at its last probe (if enabled and not drawn
        there yet) to the latest writers (`refresh()` first updates them); returns those
        writers. An error there is a write's (`ReadingGuard.write`)."""
        tracker = self.running()
        tracker.detach()
        tracker.guard.write(tracker.last_step, lambda: self._final_figures(refresh))
        return self.writers

    def _final_figures(self, refresh: Callable[[], Any] | None) -> None:
        if refresh is not None:
            refresh()
        tracker = self.running()
        step = tracker.final_figures_step()
        if step is not None:
            for writer in self.writers:
                tracker.write_figures(writer, step)

    # ----- job 4: state across a resume ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The tracker's state (or the pending one, before the tracker exists)."""
        if self.tracker is not None:
            return self.tracker.state_dict()
        return dict(self.pending or {})

    @staticmethod
    def from_json(saved: Sequence[Any], prefix: str) -> dict[str, Any] | None:
        """Of the JSON states (`records.to_json`) of several monitors of a run, decoded, the
        first whose latest tags are all `prefix` + a monitor tag (or that has no history yet);
        else None. A longer prefix is not ours: ``"b/cosmology/efolds"`` is not ``""``'s."""
        states = [from_json(s) for s in saved if s]
        for state in states:
            history = state.get("history") or [{"scalars": {}}]
            if all(_is_tag(k, prefix) for k in history[-1]["scalars"]):
                return state
        return None

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore now, or at `start` if the tracker does not exist yet. A state that cannot
        be read is dropped with one warning: never an error that blocks the resume."""
        if not state:
            return
        if self.tracker is not None:
            _restore(self.tracker, state)
        else:
            self.pending = state


def _restore(tracker: CosmologyTracker, state: Mapping[str, Any]) -> None:
    """`tracker.load_state_dict(state)`; a state of another layout (a ValueError there: keys
    missing) is dropped with the warning of a state that cannot be read."""
    try:
        tracker.load_state_dict(state)
    except ValueError as error:
        warnings.warn(dropped_state_warning(error), UserWarning, stacklevel=4)


def _is_tag(name: str, prefix: str) -> bool:
    """Whether `name` is `prefix` followed by one of `SCALAR_TAGS` (mode indices as ``{k}``)."""
    if not name.startswith(prefix):
        return False
    tag = name[len(prefix):]
    return tag in SCALAR_TAGS or re.sub(r"_\d+$", "_{k}", tag) in SCALAR_TAGS
