"""`CosmologyTracker`: schedules probes, counts e-folds, carries the run's state, checkpoints.

The probe arithmetic is `cosmo_optim.monitor.probe` (pure functions), the options
`MonitorConfig`, the outputs `cosmo_optim.monitor.sinks`, the optimiser's universe
`cosmo_optim.monitor.universe`; this class decides *when* to probe and carries what one probe
hands to the next.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from cosmo_optim._common import unwrap_parallel
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual
from cosmo_optim.monitor import probe as probes
from cosmo_optim.monitor.batches import take_probe_batch
from cosmo_optim.monitor.checks import cost_warning, top_k_warning
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.records import LastProbe, ProbeRecord, Reference, as_state
from cosmo_optim.monitor.sinks import Sinks, TensorBoardExtras
from cosmo_optim.monitor.universe import (
    StepUniverse,
    cosmology_or_none,
    dual_warnings,
    efolds_per_step,
    unwrap_optimizer,
    zero_lr_warning,
)

__all__ = ["CosmologyTracker"]


class CosmologyTracker:
    """The training monitor's engine: probes a model and reads its FLRW dual (T3–T10).

    Each probe (optimiser step n, weights θ_n) computes on the probe batch: outputs f, the full
    output-space NTK (T4), its `top_k` eigenpairs (T7) and, for a momentum-SGD optimiser with a
    `loss`, the `FLRWDual` (T3–T10). With a loss, the step before each probe it records f_{n−1} (one
    forward pass) so that the field velocity ḟ = (f_n − f_{n−1})/sqrt(η) is known (T2); at
    step 0 it is exactly zero (T1). From each probe it predicts f at the next one with the exact
    discrete NTK map (T10); the residual to what training did is ``duality/residual``.

    Optimisers without heavy-ball momentum form (Adam, RMSprop, Nesterov, ...) have no de Sitter
    dual: only the NTK and mode-amplitude tags are logged (see `scalar_tags`), and the tracker
    warns once saying so. Probes never change training: eval mode, buffers and every random
    state restored, ``.grad`` untouched.

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

    def __init__(
        self,
        model: nn.Module,
        loss: Any = None,
        *,
        optimizer: Optimizer | None = None,
        probe_batch: Any = None,
        probe_size: int = 16,
        top_k: int = 4,
        every_n_steps: int = 50,
        log_figures_every_n_steps: int | None = None,
        history_size: int = 1000,
        sink: Any = None,
        prefix: str = "",
        group: int = 0,
        output: Any = None,
        verify_ntk: bool = False,
        ntk_method: str = "auto",
        sketch_dim: int | None = None,
        distributed: bool = False,
        input_key: str | None = None,
        label_key: str | None = None,
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
        self.model, self.config, self.optimizer = unwrap_parallel(model), config, optimizer
        config.interval  # noqa: B018 (raises while the interval is open)
        self.history: deque[ProbeRecord] = deque(maxlen=config.history_size)
        self.sinks = Sinks(sink)
        self._hooks: list[Any] = []
        self._universe = StepUniverse()
        self._warned: set[int] = set()
        self._zero_lr_warned = False
        self.extras = TensorBoardExtras(config.prefix, config.log_figures_every_n_steps)
        self._inputs: Tensor | None = None
        self._targets: Tensor | None = None
        if probe_batch is not None:
            self.set_probe(probe_batch)
        self._reset_state()

    # ----- the options, read-only --------------------------------------------------------
    loss = property(lambda self: self.config.loss, doc="The per-sample loss, or None.")
    probe_size = property(lambda self: self.config.probe_size, doc="At most N probe samples.")
    top_k = property(lambda self: self.config.top_k, doc="Modes followed.")
    every_n_steps = property(lambda self: self.config.interval, doc="Probe interval (steps).")
    log_figures_every_n_steps = property(lambda self: self.config.log_figures_every_n_steps,
                                         doc="Figure interval (steps), or None.")
    prefix = property(lambda self: self.config.prefix, doc="Prepended to every tag.")
    group = property(lambda self: self.config.group, doc="The param group read.")
    writer = property(lambda self: self.sinks.writer, doc="The SummaryWriter sink, or None.")

    # ----- state -------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.last_step = -1  # the last optimiser step seen by `step`
        self.efolds = 0.0  # accumulated Σ (1 − β_n)/3 (T9)
        self.nonfinite = 0
        self._previous_outputs: tuple[int, Tensor] | None = None  # (step, f) before a probe
        self._reference: Reference | None = None
        self._last: LastProbe | None = None
        self.extras.figures_step = -1
        self.dual: FLRWDual | None = None  # the latest probe's read-out

    def state_dict(self) -> dict[str, Any]:
        """Counters, history, probe batch and reference basis: everything `resume` needs
        (plain dicts and tensors)."""
        return {
            "last_step": self.last_step, "efolds": self.efolds, "nonfinite": self.nonfinite,
            "history": [r.as_dict() for r in self.history],
            "inputs": self._inputs, "targets": self._targets,
            "previous_outputs": self._previous_outputs,
            "reference": as_state(self._reference), "last": as_state(self._last),
            "figures_step": self.extras.figures_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`: the run continues its histories without gaps or duplicates."""
        missing = {"last_step", "history", "reference", "last"} - set(state)
        if missing:
            raise ValueError(
                f"Invalid tracker state: missing {sorted(missing)}; pass the dict returned by "
                "CosmologyTracker.state_dict()."
            )
        self.last_step = int(state["last_step"])
        self.efolds = float(state.get("efolds", 0.0))
        self.nonfinite = int(state.get("nonfinite", 0))
        self.history.clear()
        self.history.extend(ProbeRecord.from_dict(r) for r in state["history"])
        if state.get("inputs") is not None:
            self._inputs, self._targets = state["inputs"], state.get("targets")
        self._previous_outputs = state.get("previous_outputs")
        ref, last = state["reference"], state["last"]
        self._reference = None if ref is None else Reference(  # no sketch_dim before sketches
            ref["kernel"], ref["eigenvectors"], int(ref.get("sketch_dim", 0)))
        self._last = None if last is None else LastProbe(
            last["step"], last["eigenvectors"], last["outputs"], last.get("prediction"))
        self.extras.figures_step = int(state.get("figures_step", -1))

    # ----- probe batch and optimiser -----------------------------------------------------
    @property
    def has_probe(self) -> bool:
        """Whether a probe batch is set."""
        return self._inputs is not None

    @property
    def probe_batch(self) -> tuple[Tensor, Tensor | None] | None:
        """(inputs, targets) of the probe set, or None before one is set."""
        return None if self._inputs is None else (self._inputs, self._targets)

    def set_probe(self, batch: Any) -> None:
        """Fix the probe set: the first `probe_size` samples of `batch` (copied; a dict batch
        by `input_key`/`label_key`, NumPy arrays as Tensors)."""
        self._inputs, self._targets = take_probe_batch(
            batch, self.config.probe_size, input_key=self.config.input_key,
            label_key=self.config.label_key)

    def cosmology(self) -> Cosmology | None:
        """The de Sitter universe (T3) of the latest optimiser step, read from the (lr,
        momentum) that step used (before any step: those the first step will use); None
        without heavy-ball SGD form or for a step with lr = 0."""
        if not self._hooks:  # not observing: the optimiser's live values
            return cosmology_or_none(self.optimizer, self.config.group)
        return self._universe.current(self.optimizer, self.config.group)

    def observe(self, optimizer: Optimizer) -> None:
        """Read the universe from `optimizer` and count e-folds on each of its steps (T9).

        Warns once per optimiser when part of the read-out cannot be measured (no heavy-ball
        dual, or param groups with different (lr, momentum)).
        """
        optimizer = unwrap_optimizer(optimizer)
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"Invalid optimizer: {optimizer!r}; it must be a torch Optimizer.")
        self.detach()
        self.optimizer = optimizer
        if id(optimizer) not in self._warned:
            self._warned.add(id(optimizer))
            for message in dual_warnings(optimizer, self.config):
                warnings.warn(message, UserWarning, stacklevel=3)

        def count(opt: Optimizer, args: Any, kwargs: Any) -> None:
            self.efolds += self._universe.before_step(opt, self.config.group, self.last_step + 1)
            self._warn_zero_lr()

        self._hooks.append(optimizer.register_step_pre_hook(count))

    def _warn_zero_lr(self) -> None:
        step = self._universe.zero_lr_step
        if step is not None and not self._zero_lr_warned:
            self._zero_lr_warned = True
            warnings.warn(zero_lr_warning(step, self.config), UserWarning, stacklevel=4)

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

        def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
            self.step(self.last_step + 1)

        self._hooks.append(optimizer.register_step_post_hook(hook))
        return self._hooks[-1]

    def detach(self) -> None:
        """Stop observing the optimiser given to `observe`/`attach`."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # ----- scheduling --------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float] | None:
        """Report optimiser step `step` (weights after `step` updates); probe if it is due.

        Call once after every optimiser step (repeats of the same step are ignored, so several
        calls per accumulated batch are harmless). Probes at step 0 and every `every_n_steps`;
        the step before a probe it records the outputs for the velocity. Without `observe`
        the e-folds accrue here, (1 − β)/3 per step (T9). Returns the probe's scalars, or None
        when nothing was probed.
        """
        if step <= self.last_step:
            return None
        if not self._hooks:  # not observing: the live (lr, momentum), for every step since
            rate = efolds_per_step(self.optimizer, self.config.group)
            self.efolds += (step - max(self.last_step, 0)) * rate
        self.last_step = step
        n = self.config.interval
        if not self.has_probe:
            return None
        if (step + 1) % n == 0 and self.config.loss is not None:  # ḟ feeds the dual only
            assert self._inputs is not None
            with probes.rank0_buffers(self.model, self.config.distributed):
                self._previous_outputs = (
                    step, probes.model_outputs(self.model, self._inputs, self.config.output))
        if step % n:
            return None
        metrics = self.probe(step)
        if metrics is not None:
            self.sinks.scalars(metrics, step)
            if self.sinks.writer is not None:
                self.write_extras(self.sinks.writer, step)
        return metrics

    def probe(self, step: int) -> dict[str, float] | None:
        """Probe now, labelled `step`; returns the scalars."""
        if self._inputs is None:
            raise ValueError("probe() needs a probe batch. Fix: call set_probe(batch) first.")
        run = probes.RunSoFar(step, self.efolds, self.nonfinite, self._previous_outputs,
                              self._reference, self._last)
        result = probes.probe(self.model, self._inputs, self._targets, config=self.config,
                              cosmology=self.cosmology(), run=run)
        if run.reference is None and result.last is not None:
            self._check_sizes(result.last.outputs)
        self._reference, self._last = result.reference, result.last
        if result.record is None:
            self.nonfinite += 1
            warnings.warn(
                f"CosmologyTracker: non-finite outputs or NTK at step {step}; probe skipped "
                f"({self.nonfinite} so far). Training continues; lower the learning rate if it "
                "diverged.",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            self.history.append(result.record)
            self.dual = result.dual
        return result.scalars

    def _check_sizes(self, outputs: Tensor) -> None:
        """At the first probe, when N and C are known: `top_k` against N·C and the probe's
        cost against a training step (`cosmo_optim.monitor.checks`), each warned once."""
        n, c = outputs.shape[0], outputs[0].numel()
        messages = [top_k_warning(self.config, n, c)]
        if self.config.train_batch_size is not None:
            messages.append(cost_warning(self.config, n, c, self.config.train_batch_size))
        for message in filter(None, messages):
            warnings.warn(message, UserWarning, stacklevel=4)

    # ----- figures and TensorBoard extras (`sinks.TensorBoardExtras`) --------------------
    def figures_due(self, step: int) -> bool:
        """Whether figures are scheduled at `step`."""
        return self.extras.figures_due(step)

    def final_figures_step(self) -> int | None:
        """The last probe's step if the end-of-run figures are still to be drawn, else None."""
        return self.extras.final_step(self.history)

    def write_extras(self, writer: Any, step: int) -> None:
        """The custom-scalars layout (once), this probe's histograms, figures when due."""
        self.extras.write(writer, self.history, self.dual, step)

    def write_figures(self, writer: Any, step: int) -> None:
        """Draw `figures()` to a ``SummaryWriter`` at `step`."""
        self.extras.write_figures(writer, self.history, self.dual, step)

    def figures(self) -> dict[str, Any]:
        """Matplotlib figures of the run so far, by tag (see `cosmo_optim.monitor.figures`)."""
        from cosmo_optim.monitor.figures import figures

        return figures(self.history, self.dual)

    def close(self) -> None:
        """Detach, draw the final figures (if enabled) to the writer sink, and close a writer
        it created."""
        self.detach()
        step = self.final_figures_step()
        if step is not None and self.sinks.writer is not None:
            self.write_figures(self.sinks.writer, step)
        self.sinks.close()
