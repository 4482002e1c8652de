"""`CosmologyTracker`: schedules readings, counts e-folds, carries the run's state, checkpoints.

The probe arithmetic is `cosmo_optim.monitor.reading` (pure functions), the options
`MonitorConfig`, the outputs `cosmo_optim.monitor.sinks`, the optimiser's universe
`cosmo_optim.monitor.universe.OptimizerWatch`, what one probe hands to the next
`cosmo_optim.monitor.state.RunState`, what a reading that raises does to the run
`cosmo_optim.monitor.guard.ReadingGuard`; this class decides *when* to probe and wires them.
"""

from __future__ import annotations

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
from cosmo_optim.monitor.guard import ReadingGuard
from cosmo_optim.monitor.names import deprecated_method
from cosmo_optim.monitor.readout import ReadingResult
from cosmo_optim.monitor.sinks import Sinks, TensorBoardExtras
from cosmo_optim.monitor.state import RunState
from cosmo_optim.monitor.universe import OptimizerWatch

__all__ = ["CosmologyTracker"]


class CosmologyTracker:
    """The training monitor's engine: reads a model's FLRW dual every few steps (T3–T12).

    Each reading (optimiser step n) computes on the probe batch: outputs f, the full NTK (T4),
    all its modes (T7, `top_k` logged), the `FLRWDual` (T3–T10, with a momentum-SGD optimiser and
    a `loss`; f_{n−1} is recorded the step before for ḟ, T2), and the duality test: the outputs
    against their linearisation through the previous reading's frozen kernel (T12). Optimisers
    without heavy-ball form (Adam, Nesterov, ...) have no de Sitter dual: the tags that need one
    are omitted (`scalar_tags`), with one warning. Readings never change training: eval mode,
    buffers and every random state restored, ``.grad`` untouched. Errors at `attach` and the
    first reading are raised; after that a reading that raises is skipped, warned about and
    counted (``cosmology/failed_readings``), never stopping training (`ReadingGuard`).

    Args:
        model: the network (maps a batch of N inputs to N outputs).
        optimizer: the optimiser; `attach` sets it too.
        probe_batch: a Tensor or NumPy array of inputs, a sequence (inputs, targets, ...), or
            a dict batch (see `input_key`); None to set it later with `set_probe` (the
            Lightning callback takes the first training batch). Floating inputs are cast to
            the model's dtype and device at each probe.
        sink: a ``SummaryWriter``-like object, a log directory (a ``SummaryWriter`` is created
            lazily), or a callable ``sink(metrics, step)``; None keeps results in `history`.

    Every other argument (``loss``, ``probe_size``, ``top_k``, ``every_n_steps``,
    ``log_figures_every_n_steps``, ``history_size``, ``prefix``, ``group``, ``output``,
    ``verify_ntk``, ``ntk_method``, ``sketch_dim``, ``distributed``, ``input_key``,
    ``label_key``, ``train_batch_size``) is the `MonitorConfig` option of that name,
    documented there once; `figures()` draws the figures on demand whatever
    ``log_figures_every_n_steps`` says.

    Raises:
        ValueError: on an invalid argument, naming the fix.

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
        """A tracker with a validated `MonitorConfig` (its probe interval must be set)."""
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

    # ----- the options and the run, read-only unless said ---------------------------------
    loss = property(lambda self: self.config.loss, doc="The per-sample loss, or None.")
    probe_size = property(lambda self: self.config.probe_size, doc="At most N probe samples.")
    top_k = property(lambda self: self.config.top_k, doc="Modes followed.")
    every_n_steps = property(lambda self: self.config.interval, doc="Probe interval (steps).")
    log_figures_every_n_steps = property(lambda self: self.config.log_figures_every_n_steps,
                                         doc="Figure interval (steps), or None.")
    prefix = property(lambda self: self.config.prefix, doc="Prepended to every tag.")
    group = property(lambda self: self.config.group, doc="The param group read.")
    writer = property(lambda self: self.sinks.writer, doc="The SummaryWriter sink, or None.")
    optimizer = property(lambda self: self._watch.optimizer, doc="The optimiser read, or None.")
    history = property(lambda self: self.run.history, doc="The latest probes' `Reading`s.")
    dual = property(lambda self: self.run.dual, doc="The latest probe's `FLRWDual`, or None.")
    nonfinite = property(lambda self: self.run.nonfinite, doc="Probes skipped as non-finite.")
    failures = property(lambda self: list(self.guard.failures),
                        doc="The latest `Failure`s after the run started (`ReadingGuard`).")
    last_step = property(lambda self: self.run.last_step,
                         lambda self, step: setattr(self.run, "last_step", step),
                         doc="The last optimiser step seen (an adaptor resuming sets it).")
    efolds = property(lambda self: self.run.efolds,
                      lambda self, n: setattr(self.run, "efolds", n),
                      doc="The e-folds accumulated so far, Σ (1 − β_n)/3 (T9).")

    # ----- state -------------------------------------------------------------------------
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

    # ----- probe batch and optimiser -----------------------------------------------------
    has_probe = property(lambda self: self.run.inputs is not None,
                         doc="Whether a probe batch is set.")
    probe_batch = property(lambda self: None if self.run.inputs is None else (
        self.run.inputs, self.run.targets), doc="(inputs, targets) of the probe set, or None.")

    def set_probe(self, batch: Any) -> None:
        """Fix the probe set: the first `probe_size` samples of `batch` (copied; a dict batch
        by `input_key`/`label_key`, NumPy arrays as Tensors)."""
        self.run.inputs, self.run.targets = take_probe_batch(
            batch, self.config.probe_size, input_key=self.config.input_key,
            label_key=self.config.label_key)

    def cosmology(self) -> Cosmology | None:
        """The de Sitter universe (T3) of the latest optimiser step, read from the (lr,
        momentum) that step used (before any step: those the first step will use); None
        without heavy-ball SGD form or for a step with lr = 0."""
        return self._watch.cosmology(self.config)

    def observe(self, optimizer: Optimizer) -> None:
        """Read the universe from `optimizer` and count e-folds on each of its steps (T9).

        Warns once per optimiser when part of the read-out cannot be measured (no heavy-ball
        dual, or param groups with different (lr, momentum)).
        """
        self._watch.observe(optimizer, self.run, self.config)

    def attach(self, optimizer: Optimizer) -> Any:
        """Track a plain PyTorch loop: probe now (step 0) and after every `optimizer.step()`.

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
        """After a resume at optimiser step `step`, right after a reading: its weights, the
        model's now, are the next reading's θ_ref (T12; `RunState.resume_from`)."""
        self.run.resume_from(self.model, step,
                             lambda: _outputs_at(self, -1, self.run.inputs, lean=False))

    def detach(self) -> None:
        """Stop observing the optimiser given to `observe`/`attach`."""
        self._watch.detach()

    # ----- scheduling --------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float] | None:
        """Report optimiser step `step` (weights after `step` updates); probe if it is due.

        Call once after every optimiser step (repeats of the same step are ignored, so several
        calls per accumulated batch are harmless). Probes at step 0 and every `every_n_steps`;
        the step before a probe it records the outputs for the velocity. Without `observe`
        the e-folds accrue here, (1 − β)/3 per step (T9). Returns the probe's scalars (of a
        reading that failed, the count of failed ones), or None when nothing was probed.
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

    # ----- figures and TensorBoard extras (`sinks.TensorBoardExtras`) --------------------
    def final_figures_step(self) -> int | None:
        """The last probe's step if the end-of-run figures are still to be drawn, else None."""
        return self.extras.final_step(self.history)

    def write_extras(self, writer: Any, step: int) -> None:
        """The custom-scalars layout (once), this probe's histograms, figures when due, and the
        card of what failed since the last reading (`ReadingGuard.card`)."""
        self.extras.write(writer, self.history, self.dual, step, self.guard.card(step))

    def write_figures(self, writer: Any, step: int) -> None:
        """Draw `figures()` to a ``SummaryWriter`` at `step`."""
        self.extras.write_figures(writer, self.history, self.dual, step)

    def figures(self) -> dict[str, Any]:
        """Matplotlib figures of the run so far, by tag (see `cosmo_optim.monitor.figures`)."""
        from cosmo_optim.monitor.figures import figures

        return figures(self.history, self.dual)

    def close(self) -> None:
        """Detach, draw the final figures (if enabled) to the writer sink, and close a writer
        it created (an error there is the guard's, like any write)."""
        self.detach()
        self.guard.write(self.last_step, lambda: _close(self))


def _guarded_read(tracker: CosmologyTracker, step: int) -> dict[str, float]:
    """A reading under the guard: its scalars, or, when it failed (on any rank: every rank
    skips it), the count of failed readings alone, at its step."""
    guard = tracker.guard
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
    result = readings.take_reading(
        tracker.model, run.inputs, run.targets, config=tracker.config,
        cosmology=tracker.cosmology(), run=run.so_far(step, tracker.guard.failed),
        snapshot=run.snapshot, lean=lean, sync=sync)
    return result, None if result.record is None else WeightSnapshot.take(tracker.model, step)


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
