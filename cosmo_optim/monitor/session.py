"""`MonitorSession`: a `CosmologyTracker` run inside a framework, through a small `Port`.

The Lightning and Hugging Face callbacks are thin adaptors: each turns its framework into a
`Port` (rank zero, broadcast, gather, how scalars are logged and on which step, the writers
that take TensorBoard extras or figures) and calls the session from its hooks. The session
does the rest, the same for every framework:

- `start`: the tracker built once (a checkpoint's state restored), the optimiser observed;
- `share_probe`: one probe batch on every rank and any device count, taken by rank 0 from the
  data set (or the given one) and broadcast, else gathered from every rank's first batch in
  rank order (`cosmo_optim.monitor.batches`);
- `on_step`: a resumed run continued at its first step, a reading when due, its scalars
  logged through the port on the framework's own
  step, and on rank 0 its TensorBoard extras, descriptions and cards (`ReadingGuard.write`:
  after the run started, a write that raises loses that write only);
- `end`: the final figures and the run's summary table on the console (`summary`);
- the state across a resume, held until the tracker exists.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cosmo_optim.monitor.batches import first_samples, take_probe_batch
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.console import console
from cosmo_optim.monitor.dashboard import describe_scalars
from cosmo_optim.monitor.images import figures_dropped_warning
from cosmo_optim.monitor.records import from_json
from cosmo_optim.monitor.state import dropped_state_warning
from cosmo_optim.monitor.summary import RunSummary, summarize
from cosmo_optim.monitor.tags import SCALAR_TAGS
from cosmo_optim.monitor.tracker import CosmologyTracker
from cosmo_optim.ntk import ModelInputs

__all__ = ["MonitorSession", "Port"]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Port:
    """A framework as a monitor session sees it. These defaults are one process or the
    initialised ``torch.distributed`` group, logging and writing nothing; an adaptor overrides
    what its framework does otherwise."""

    #: Prepended to the tags the session writes straight to a writer (the framework's own
    #: rewriting of logged names, e.g. the Hugging Face Trainer's ``train/``).
    writer_prefix = ""

    def rank_zero(self) -> bool:
        """Whether this process writes (rank 0)."""
        return not _distributed() or torch.distributed.get_rank() == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not _distributed():
            return value
        shared = [value]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order."""
        if not _distributed():
            return [value]
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, value)
        return out

    def step(self, step: int) -> int:
        """The framework's own step for the reading after `step` optimiser steps (what its
        step-keyed loggers and TensorBoard key the reading's rows on)."""
        return step

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        """Log one reading's scalars at the framework's `step` (called on every rank)."""

    def writers(self) -> tuple[list[Any], list[str]]:
        """Rank 0's ``SummaryWriter``s (everything but the scalars) and image writers
        (`cosmo_optim.monitor.images.FigureWriter`: figures), and the names of the loggers
        that take no figure."""
        return [], []


class MonitorSession:
    """One run of a monitor inside a framework (see the module docstring).

    Args:
        owner: the adaptor's class name, for messages (``"CosmologyMonitor"``).
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.port = Port()
        self.tracker: CosmologyTracker | None = None
        self.pending: Mapping[str, Any] | None = None  # a checkpoint's state, until `start`
        self._figures_warned = False
        self._latest: list[Any] = []  # the writers of the latest write
        self._continued = False  # whether the first step of this run was reported
        self._ended = False  # a run ended: the next `start` is a new run, a new series

    def start(self, model: nn.Module, config: MonitorConfig, *, port: Port | None = None,
              optimizer: Any = None) -> CosmologyTracker:
        """The tracker of this run (built for `model` with `config` unless it exists and its
        run has not ended: a second `fit`/`train` is a new series), with a pending state
        restored, reading `optimizer`, through the framework's `port`."""
        self.port = port or Port()
        if self.tracker is None or self.tracker.model is not model or self._ended:
            self.tracker = CosmologyTracker.from_config(model, config)
        self._ended = False
        if self.pending is not None:
            _restore(self.tracker, self.pending)
            self.pending = None
        if optimizer is not None:
            self.tracker.observe(optimizer)
        self._continued = False
        return self.tracker

    def running(self) -> CosmologyTracker:
        """The tracker; a RuntimeError naming the fix before `start`."""
        if self.tracker is None:
            raise RuntimeError(
                f"{self.owner} used before training started; add it to the Trainer's "
                "callbacks (it starts with training)."
            )
        return self.tracker

    def share_probe(self, given: Any = None, loader: Any = None, batch: Any = None, *,
                    keywords: bool = False, train_batch_size: int | None = None) -> None:
        """Give the tracker one probe batch for every rank and any device count (unless it has
        one): rank 0's `given` probe batch, else the first `probe_size` samples of the data
        set of `loader` (`first_samples`; an iterable one's only without a `batch`), taken by
        rank 0 and broadcast; else the first `probe_size` samples of every rank's first
        `batch`, gathered in rank order. `keywords`: a dict batch goes to the model as keyword
        arguments; `train_batch_size`: the samples of one optimiser step (cost warning)."""
        tracker = self.running()
        if tracker.has_probe:
            return
        config = tracker.config

        def as_probe(value: Any) -> Any:
            return take_probe_batch(value, config.probe_size, input_key=config.input_key,
                                    label_key=config.label_key, keywords=keywords)

        take = (lambda: given) if given is not None else first_samples(
            loader, config.probe_size, iterate=batch is None)
        if take is not None:
            with torch.random.fork_rng():  # a collator or transform may draw random numbers
                shared = self.port.broadcast(as_probe(take()) if self.port.rank_zero() else None)
        elif batch is not None:
            parts = self.port.gather(as_probe(batch))
            shared = (_joined([x for x, _ in parts]),
                      None if parts[0][1] is None else torch.cat([y for _, y in parts]))
        else:
            raise ValueError(f"{self.owner}: no probe batch: the training data loader has no "
                             "data set to take it from. Fix: pass probe_batch=...")
        tracker.set_probe(shared, train_batch_size=train_batch_size)

    def on_step(self, step: int) -> dict[str, float] | None:
        """Report optimiser step `step` to the tracker (the first report of a resumed run
        continues it there, `CosmologyTracker.resume_from`); write the reading if one was
        due."""
        if not self._continued:
            self._continued = True
            if step > 0:
                self.running().resume_from(step)
        metrics = self.running().step(step)
        if metrics:
            self.write(metrics, step)
        return metrics

    def write(self, metrics: dict[str, float], step: int) -> None:
        """A reading's scalars through the port at the framework's step (each tag's
        description with units sent first to rank 0's ``SummaryWriter``s), then its extras to
        them (`CosmologyTracker.write_extras`). After the run has started an error here loses
        this write only (`ReadingGuard.write`)."""
        self.running().guard.write(step, lambda: self._write(metrics, step))

    def _write(self, metrics: dict[str, float], step: int) -> None:
        tracker, at = self.running(), self.port.step(step)
        writers = self._writers() if self.port.rank_zero() else []
        for writer in writers:
            if hasattr(writer, "add_scalar"):
                describe_scalars(writer)
        self.port.log_scalars(metrics, at)
        for writer in writers:
            tracker.write_extras(writer, step, at=at, prefix=self.port.writer_prefix
                                 + tracker.prefix)

    def _writers(self) -> list[Any]:
        """The port's writers (kept for the end of the run); with figures on, one warning per
        run naming the loggers that take none."""
        writers, dropped = self.port.writers()
        self._latest = writers
        if dropped and not self._figures_warned and (
                self.running().config.log_figures_every_n_steps is not None):
            self._figures_warned = True
            warnings.warn(figures_dropped_warning(self.owner, dropped), UserWarning, stacklevel=5)
        return writers

    def end(self, *, close: bool = False) -> RunSummary | None:
        """The end of training: the run's figures once more at its last reading (if enabled
        and not drawn there yet) to the writers of its last write, which `close` then closes
        (a framework that closed them before this hook), and the summary table on the console
        (rank 0); returns the summary (None on other ranks and before any reading)."""
        tracker = self.running()
        tracker.detach()
        self._ended = True
        if not self.port.rank_zero() or not tracker.history:
            return None
        step, writers = tracker.final_figures_step(), self._latest
        prefix = self.port.writer_prefix + tracker.prefix
        if step is not None:
            tracker.guard.write(step, lambda: _each(writers, lambda w: tracker.write_figures(
                w, self.port.step(step), prefix=prefix)))
        if close:
            tracker.guard.write(tracker.last_step, lambda: _each(
                [w for w in {id(w): w for w in writers}.values() if hasattr(w, "add_scalar")],
                lambda w: w.close()))
        summary = tracker.summary()
        console().info(summary.table())
        return summary

    def summary(self) -> RunSummary:
        """What the run's readings say so far (`CosmologyTracker.summary`; before training,
        the summary of no reading, as a tracker's)."""
        return self.running().summary() if self.tracker is not None else summarize([])

    # ----- state across a resume -------------------------------------------------------------
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

    def load_json(self, saved: Sequence[Any], prefix: str, fallback: Any = None) -> None:
        """Restore this monitor's state of the JSON states a framework kept (`from_json`),
        else `fallback` (one state, whatever its tags). A state that cannot be decoded is
        dropped with one warning: never an error that blocks the resume."""
        try:
            state = self.from_json(saved, prefix) or (from_json(fallback) if fallback else None)
        except Exception as error:
            warnings.warn(dropped_state_warning(error), UserWarning, stacklevel=3)
            return
        self.load_state_dict(state)

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore now into the running tracker, else at `start` (a tracker that does not
        exist yet, or whose run ended: the resumed run is a new one). A state that cannot be
        read is dropped with one warning: never an error that blocks the resume."""
        if not state:
            return
        if self.tracker is not None and not self._ended:
            _restore(self.tracker, state)
        else:
            self.pending = state


def _each(writers: list[Any], write: Callable[[Any], object]) -> None:
    for writer in writers:
        write(writer)


def _joined(parts: list[ModelInputs]) -> ModelInputs:
    """Several ranks' probe inputs as one, in rank order: each argument that holds samples
    (along dim 0, as `take_probe_batch` makes them) concatenated, others as rank 0 has them."""
    first = parts[0]

    def cat(values: list[Any]) -> Any:
        held = all(isinstance(v, torch.Tensor) and v.dim() and len(v) == len(p)
                   for v, p in zip(values, parts, strict=True))
        return torch.cat(values) if held else values[0]

    args = tuple(cat([p.args[i] for p in parts]) for i in range(len(first.args)))
    return ModelInputs(args, {k: cat([p.kwargs[k] for p in parts]) for k in first.kwargs})


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
