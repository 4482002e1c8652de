"""`CosmologyTracker`: schedules readings, counts e-folds, carries the run's state, checkpoints.

The reading's arithmetic is `cosmo_optim.monitor.reading` (pure functions), the options
`MonitorConfig`, the outputs `cosmo_optim.monitor.sinks`, the optimiser's universe
`cosmo_optim.monitor.universe.OptimizerWatch`, what one reading hands to the next
`cosmo_optim.monitor.state.RunState`, what a reading that raises does to the run
`cosmo_optim.monitor.guard.ReadingGuard`; this class decides *when* to read and wires them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer

from cosmo_optim._common import unwrap_parallel
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual.linearised import WeightSnapshot
from cosmo_optim.monitor import reading as readings
from cosmo_optim.monitor.batches import take_probe_batch
from cosmo_optim.monitor.checks import nonfinite_warning, size_warnings
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.console import console, rank_zero, timed
from cosmo_optim.monitor.guard import ReadingGuard
from cosmo_optim.monitor.model_loss import MODEL_LOSS
from cosmo_optim.monitor.names import deprecated_method
from cosmo_optim.monitor.reading import precision_of
from cosmo_optim.monitor.readout import ReadingResult
from cosmo_optim.monitor.sinks import Sinks, TensorBoardExtras
from cosmo_optim.monitor.state import RunState
from cosmo_optim.monitor.summary import RunSummary, summarize
from cosmo_optim.monitor.universe import OptimizerWatch

__all__ = ["CosmologyTracker"]


class CosmologyTracker:
    """The training monitor's engine: reads a model's FLRW dual every few steps (T3–T12).

    Each reading (optimiser step n) computes on the probe batch the outputs f, the full NTK
    (T4) and its modes (T7, `top_k` logged), the `FLRWDual` (T3–T10; with momentum SGD and a
    `loss`) and the duality test: the outputs against their linearisation through the previous
    reading's frozen kernel (T12). Without heavy-ball form (Adam, Nesterov, ...) there is no de
    Sitter dual: its tags are omitted (`scalar_tags`), with one warning. Readings never change
    training (eval mode, buffers, random states and ``.grad`` restored). Errors at `attach` and
    the first reading are raised; later a reading that raises is skipped, warned about and
    counted (``cosmology/failed_readings``, `ReadingGuard`).

    Args:
        model: the network (maps a batch of N inputs to N outputs).
        optimizer: the optimiser; `attach` sets it too.
        probe_batch: a Tensor or NumPy array of inputs, a sequence (inputs, targets, ...), or
            a dict batch (see `input_key`); None to set it later with `set_probe`.
        sink: a ``SummaryWriter``-like object, a log directory (a ``SummaryWriter`` is created
            lazily), or a callable ``sink(metrics, step)``; None keeps results in `history`.

    Every other argument is the `MonitorConfig` option of that name, documented there once.
    Raises ValueError on an invalid argument, naming the fix.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        >>> tracker = CosmologyTracker(net, nn.MSELoss(), probe_batch=(x, y), top_k=2,
        ...                            every_n_steps=5)
        >>> handle = tracker.attach(opt)
        >>> for _ in range(10):
        ...     opt.zero_grad(); nn.functional.mse_loss(net(x), y).backward(); opt.step()
        >>> [r.step for r in tracker.history]
        [0, 5, 10]
        >>> round(tracker.history[-1].scalars["cosmology/hubble_rate"], 4)
        0.3333
    """

    def __init__(  # the options after `sink`: MonitorConfig's, in its order
        self, model: nn.Module, loss: Any = None, *, optimizer: Optimizer | None = None,
        probe_batch: Any = None, probe_size: int = 16, top_k: int = 4, every_n_steps: int = 50,
        log_figures_every_n_steps: int | None = None, history_size: int = 1000,
        sink: Any = None, prefix: str = "", group: int = 0, output: Any = None,
        verify_ntk: bool = False, ntk_method: str = "exact", sketch_dim: int | None = None,
        distributed: bool = False, input_key: str | None = None, label_key: str | None = None,
        train_batch_size: int | None = None,
    ) -> None:
        config = MonitorConfig(
            loss, probe_size, top_k, every_n_steps, log_figures_every_n_steps, history_size,
            prefix, group, output, verify_ntk, ntk_method, sketch_dim, distributed,
            input_key, label_key, train_batch_size,
        )
        self._setup(model, config, optimizer=optimizer, probe_batch=probe_batch, sink=sink)

    @classmethod
    def from_config(cls, model: nn.Module, config: MonitorConfig, *,
                    optimizer: Optimizer | None = None, probe_batch: Any = None,
                    sink: Any = None) -> CosmologyTracker:
        """A tracker with a validated `MonitorConfig` (its reading interval must be set)."""
        tracker = cls.__new__(cls)
        tracker._setup(model, config, optimizer=optimizer, probe_batch=probe_batch, sink=sink)
        return tracker

    def _setup(self, model: nn.Module, config: MonitorConfig, *, optimizer: Optimizer | None,
               probe_batch: Any, sink: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__}; it must be an nn.Module.")
        config.interval  # noqa: B018 (raises while the interval is open)
        self.model, self._watch = unwrap_parallel(model), OptimizerWatch(optimizer)
        self.config, self.run, self.sinks = config, RunState(config.history_size), Sinks(sink)
        self.guard = ReadingGuard(config)
        self.extras = TensorBoardExtras(config.prefix, config.log_figures_every_n_steps,
                                        config.interval)
        if probe_batch is not None:
            self.set_probe(probe_batch)

    loss = property(lambda self: self.config.loss, doc="The per-sample loss, or None.")
    probe_size = property(lambda self: self.config.probe_size, doc="At most N probe samples.")
    top_k = property(lambda self: self.config.top_k, doc="Modes followed.")
    every_n_steps = property(lambda self: self.config.interval, doc="Reading interval (steps).")
    log_figures_every_n_steps = property(lambda self: self.config.log_figures_every_n_steps,
                                         doc="Figure interval (steps), or None.")
    prefix = property(lambda self: self.config.prefix, doc="Prepended to every tag.")
    group = property(lambda self: self.config.group, doc="The param group read.")
    writer = property(lambda self: self.sinks.writer, doc="The SummaryWriter sink, or None.")
    optimizer = property(lambda self: self._watch.optimizer, doc="The optimiser read, or None.")
    history = property(lambda self: self.run.history, doc="The latest readings' `Reading`s.")
    dual = property(lambda self: self.run.dual, doc="The latest reading's `FLRWDual`, or None.")
    nonfinite = property(lambda self: self.run.nonfinite, doc="Readings skipped as non-finite.")
    failures = property(lambda self: list(self.guard.failures),
                        doc="The latest `Failure`s after the run started (`ReadingGuard`).")
    last_step = property(lambda self: self.run.last_step,
                         doc="The last optimiser step seen (-1 before any).")
    efolds = property(lambda self: self.run.efolds,
                      lambda self, n: setattr(self.run, "efolds", n),
                      doc="The e-folds accumulated so far, Σ (1 − β_n)/3 (T9).")

    def state_dict(self) -> dict[str, Any]:
        """Counters, history, probe batch and reference basis: everything `resume` needs
        (plain dicts and tensors)."""
        return {**self.run.state_dict(), "figures_step": self.extras.figures_step,
                "failed_readings": self.guard.failed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`: the run continues its histories without gaps or duplicates
        (a state of an unknown version is dropped with a warning, `RunState.load_state_dict`)."""
        if self.run.load_state_dict(state):
            self.extras.figures_step = int(state.get("figures_step", -1))
            self.guard.failed = int(state.get("failed_readings", 0))

    has_probe = property(lambda self: self.run.inputs is not None,
                         doc="Whether a probe batch is set.")
    probe_batch = property(lambda self: None if self.run.inputs is None else (
        self.run.inputs, self.run.targets), doc="(inputs as a `cosmo_optim.ntk.ModelInputs`, "
                                                "targets) of the probe batch, or None.")

    def set_probe(self, batch: Any, *, train_batch_size: int | None = None) -> None:
        """Fix the probe batch: the first `probe_size` samples of `batch` (copied to the CPU;
        a dict batch by `input_key`/`label_key`, NumPy arrays as Tensors, inputs that are a
        `cosmo_optim.ntk.ModelInputs` as they are). `train_batch_size`, the samples of one
        optimiser step, sets `MonitorConfig.train_batch_size` (the first reading's cost
        warning) where an adaptor learns it from the first batch."""
        self.run.inputs, self.run.targets = take_probe_batch(
            batch, self.config.probe_size, input_key=self.config.input_key,
            label_key=self.config.label_key)
        if train_batch_size is not None:
            self.config = dataclasses.replace(self.config, train_batch_size=train_batch_size)

    def cosmology(self) -> Cosmology | None:
        """The de Sitter universe (T3) of the latest optimiser step, read from the (lr,
        momentum) that step used (before any step: those the first step will use); None
        without heavy-ball SGD form or for a step with lr = 0."""
        return self._watch.cosmology(self.config)

    def observe(self, optimizer: Optimizer) -> None:
        """Read the universe from `optimizer` and count e-folds on each of its steps (T9).

        Warns once per optimiser when part of the read-out cannot be measured (no heavy-ball
        dual, or param groups with different (lr, momentum), or none of the model's).
        """
        self._watch.observe(optimizer, self.run, self.config, self.model)

    def attach(self, optimizer: Optimizer) -> Any:
        """Track a plain PyTorch loop: read now (step 0) and after every `optimizer.step()`.

        Uses `Optimizer.register_step_post_hook`; returns its handle (`handle.remove()` or
        `detach()` stops tracking). The step counter is the tracker's own `last_step`.
        """
        if not self.has_probe:
            raise ValueError(
                "attach() needs a probe batch. Fix: pass probe_batch=(inputs, targets) to "
                "CosmologyTracker or call set_probe(batch) first."
            )
        self.observe(optimizer)
        if self.last_step < 0:
            self.step(0)
        else:
            self.resume_from(self.last_step)

        def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
            self.step(self.last_step + 1)

        self._watch.hooks.append(optimizer.register_step_post_hook(hook))
        return self._watch.hooks[-1]

    def resume_from(self, step: int) -> None:
        """The run continues at optimiser step `step` (a resumed run): steps up to it are not
        read again, and if it stopped right after a reading at `step`, the model's weights,
        that reading's, are the next reading's θ_ref (T12; `RunState.resume_from`)."""
        if self.run.inputs is not None:
            self.run.resume_from(self.model, step,
                                 lambda: _outputs_at(self, -1, self.run.inputs, lean=False))
        self.run.last_step = max(self.run.last_step, step)

    def detach(self) -> None:
        """Stop observing the optimiser given to `observe`/`attach`."""
        self._watch.detach()

    def step(self, step: int) -> dict[str, float] | None:
        """Report optimiser step `step` (weights after `step` updates); read if one is due.

        Call once after every optimiser step (repeats of the same step are ignored, so several
        calls per accumulated batch are harmless). Reads at step 0 and every `every_n_steps`;
        the step before a reading it records the outputs for the velocity. Without `observe`
        the e-folds accrue here, (1 − β)/3 per step (T9). Returns the reading's scalars (of a
        reading that failed, the count of failed ones), or None when nothing was read.
        """
        if step <= self.last_step:
            return None
        self.guard.started |= self.run.reference is not None  # fail fast until then
        if not self._watch.observing:  # the live (lr, momentum), for every step since
            rate = self._watch.efolds_per_step(self.config)
            self.run.efolds += (step - max(self.last_step, 0)) * rate
        self.run.last_step = step
        n, inputs = self.config.interval, self.run.inputs
        if inputs is None or self.guard.stopped:
            return None
        metrics = _guarded_read(self, step) if step % n == 0 else None
        if metrics is not None:
            self.guard.write(step, lambda: _write(self, metrics, step))
        if (step + 1) % n == 0 and self.config.loss is not None:  # ḟ feeds the dual only
            self.run.previous_outputs = self.guard.read(step, lambda lean, _: (
                step, _outputs_at(self, step, inputs, lean)), stage="forward")
        return metrics

    def read(self, step: int) -> dict[str, float] | None:
        """Take a reading now (one probe of the model on the probe batch), labelled `step`;
        returns its scalars. Errors are raised (`step` skips a reading that fails)."""
        if self.run.inputs is None:
            raise ValueError("read() needs a probe batch. Fix: call set_probe(batch) first.")
        return _keep(self, step, *_take(self, step, False, None))

    probe = deprecated_method("read", "CosmologyTracker.probe")

    def final_figures_step(self) -> int | None:
        """The last reading's step if the end-of-run figures are still to be drawn, else None."""
        return self.extras.final_step(self.history)

    def write_extras(self, writer: Any, step: int, *, at: int | None = None,
                     prefix: str | None = None) -> None:
        """What the reading at `step` adds to a ``SummaryWriter`` besides its scalars
        (`TensorBoardExtras.write`: the layout of the charts the run fills, log10 views,
        histograms, cards, figures when due), at step `at` (default `step`: a framework may
        key its rows otherwise) and under `prefix` (default the tags' own)."""
        self.extras.write(writer, self.history, self.dual, step, self.guard.card(step),
                          at=at, prefix=prefix)

    def write_figures(self, writer: Any, step: int, *, prefix: str | None = None) -> None:
        """Draw `figures()` to a ``SummaryWriter`` at `step`."""
        self.extras.write_figures(writer, self.history, self.dual, step, prefix=prefix)

    def hyperparameters(self) -> dict[str, Any]:
        """The physics hyperparameters of the run (T3) and the monitor's settings, by tag:
        what an adaptor logs beside the framework's own hyperparameters."""
        return self._watch.hyperparameters(self.config)

    def summary(self) -> RunSummary:
        """What the run's readings say (`cosmo_optim.monitor.summary.RunSummary`): where the
        dual held and by how much, the largest causes where it did not, the background and
        the spectrum's story; `.table()` is the text logged at the end of a run."""
        return summarize(self.history, interval=self.every_n_steps, nonfinite=self.nonfinite,
                         failed=self.guard.failed, precision=str(precision_of(self.model)))

    def figures(self) -> dict[str, Any]:
        """Matplotlib figures of the run so far, by tag (see `cosmo_optim.monitor.figures`)."""
        from cosmo_optim.monitor.figures import figures

        return figures(self.history, self.dual)

    def close(self) -> None:
        """Detach, draw the final figures (if enabled) to the writer sink, close a writer it
        created (an error there is the guard's, like any write), and log the run's summary
        table (`summary`, on the ``cosmo_optim.monitor.console`` logger)."""
        self.detach()
        self.guard.write(self.last_step, lambda: _close(self))
        if self.history and rank_zero():
            console().info(self.summary().table())


def _guarded_read(tracker: CosmologyTracker, step: int) -> dict[str, float]:
    """A reading under the guard: its scalars, or, when it failed (on any rank: every rank
    skips it), the count of failed readings alone, at its step."""
    guard, run = tracker.guard, tracker.run
    assert run.inputs is not None  # step() returns without
    outputs = "" if run.last is None else f" × {run.last.outputs[0].numel()} outputs"
    with timed(step, f"the NTK of {len(run.inputs)} probe samples{outputs}"):
        taken = guard.read(step, lambda lean, sync: _take(tracker, step, lean, sync))
    if taken is None:
        return {tracker.prefix + "cosmology/failed_readings": float(guard.failed)}
    return _keep(tracker, step, *taken)


def _take(tracker: CosmologyTracker, step: int, lean: bool,
          sync: readings.Sync | None) -> tuple[ReadingResult, WeightSnapshot | None]:
    """A reading at `step` and the weights now (the next reading's θ_ref, T12), not kept yet:
    under DDP the ranks first agree that it succeeded (`ReadingGuard.read`)."""
    run = tracker.run
    assert run.inputs is not None  # step() and read() return or raise without
    if tracker.config.loss == MODEL_LOSS:
        _resolve_loss(tracker)
    result = readings.take_reading(
        tracker.model, run.inputs, run.targets, config=tracker.config,
        cosmology=tracker.cosmology(), run=run.so_far(step, tracker.guard.failed),
        snapshot=run.snapshot, lean=lean, sync=sync)
    return result, None if result.record is None else WeightSnapshot.take(tracker.model, step)


def _resolve_loss(tracker: CosmologyTracker) -> None:
    """``loss="model"``: the model's own loss found on the probe batch (`own_loss_of`), said on
    the console; a warning naming the fix when there is none."""
    run, config = tracker.run, tracker.config
    loss, what = (None, "the probe batch has no targets") if run.targets is None else (
        readings.own_loss_of(tracker.model, run.inputs, run.targets, config))
    tracker.config = dataclasses.replace(config, loss=loss)
    if loss is not None and rank_zero():
        console().info("CosmologyTracker: the dual uses the model's own loss, %s (matched on "
                       "the probe batch; loss=... overrides it).", what)
    elif loss is None:
        warnings.warn(
            f"CosmologyTracker: loss='model', but {what}, so the tags that need a loss (the "
            "potential, Ω_φ, slow roll, masses, forecast) are not logged. Fix: pass the loss "
            "the model is trained with (e.g. loss=nn.CrossEntropyLoss()), or loss=None.",
            UserWarning, stacklevel=6)


def _keep(tracker: CosmologyTracker, step: int, result: ReadingResult,
          snapshot: WeightSnapshot | None) -> dict[str, float]:
    """Keep a reading in the run (the first one: with the size warnings); its scalars."""
    if tracker.run.reference is None and result.last is not None:  # N and C known, once
        for message in size_warnings(tracker.config, result.last.outputs):
            warnings.warn(message, UserWarning, stacklevel=5)
    if not tracker.run.absorb(result, snapshot) and tracker.nonfinite == 1:
        warnings.warn(nonfinite_warning(step), RuntimeWarning, stacklevel=5)
    return result.scalars


def _write(tracker: CosmologyTracker, metrics: dict[str, float], step: int) -> None:
    """A reading's scalars to the tracker's own sinks, then its extras to its writer."""
    tracker.sinks.scalars(metrics, step)
    if tracker.sinks.writer is not None:
        tracker.write_extras(tracker.sinks.writer, step)


def _close(tracker: CosmologyTracker) -> None:
    step = tracker.final_figures_step()
    if step is not None and tracker.sinks.writer is not None:
        tracker.write_figures(tracker.sinks.writer, step)
    tracker.sinks.close()


def _outputs_at(tracker: CosmologyTracker, step: int, inputs: Any, lean: bool) -> Any:
    """f at `step`, the next reading's f_{n−1}: this step's reading's own (every_n_steps=1),
    else (or for step −1: now, whatever the last reading) one more forward on the probe batch."""
    last = tracker.run.last
    if last is not None and last.step == step:
        return last.outputs
    return readings.probe_outputs(tracker.model, inputs, tracker.config, lean)
