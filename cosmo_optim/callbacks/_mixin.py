"""Lightning plumbing shared by `lightning.pytorch` and `pytorch_lightning` (imports neither).

`lightning.CosmologyMonitor` and `pytorch_lightning.CosmologyMonitor` are this mixin on top of
each package's own `Callback`; the work is done by `cosmo_optim.monitor.CosmologyTracker`, and
the jobs every adaptor shares (rank-0 probe batch, rank-0 writes, end-of-run figures, state
across a resume) by `cosmo_optim.monitor.session.MonitorSession`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from cosmo_optim.monitor import MonitorConfig
from cosmo_optim.monitor.batches import batch_size, take_probe_batch
from cosmo_optim.monitor.session import MonitorSession

__all__ = ["CosmologyMonitorMixin"]


class CosmologyMonitorMixin:
    """Framework-agnostic body of `CosmologyMonitor`; subclasses set the two class attributes."""

    #: the framework's `TensorBoardLogger` (figures, histograms, custom scalars go to those).
    _tensorboard_logger_cls: Any = type(None)
    #: the framework's `LightningModule` (to check that `forward` is defined).
    _lightning_module_cls: type = type(None)
    #: the framework's `Trainer` and the import of this callback for it (namespace check).
    _trainer_cls: Any = type(None)
    _import: str = ""
    #: the framework's configuration error (as `LearningRateMonitor` raises).
    _misconfiguration: type[Exception] = ValueError

    def __init__(
        self,
        loss: Any = None,
        *,
        every_n_train_steps: int | None = None,
        top_k: int = 4,
        probe_batch: Any = None,
        probe_size: int = 16,
        log_figures_every_n_steps: int | None = None,
        prefix: str = "",
        history_size: int = 1000,
        verify_ntk: bool = False,
        ntk_method: str = "exact",
        sketch_dim: int | None = None,
        group: int = 0,
        output: str | Callable[[Any], torch.Tensor] | None = None,
        input_key: str | None = None,
        label_key: str | None = None,
    ) -> None:
        super().__init__()
        self.config = MonitorConfig(
            loss, probe_size, top_k, every_n_train_steps, log_figures_every_n_steps,
            history_size, prefix, group, output, verify_ntk=verify_ntk, ntk_method=ntk_method,
            sketch_dim=sketch_dim, input_key=input_key, label_key=label_key,
            interval_name="every_n_train_steps",
        )
        self.probe_batch = None if probe_batch is None else self._take(probe_batch, probe_size)
        self.session = MonitorSession("CosmologyMonitor")

    tracker = property(lambda self: self.session.tracker,
                       doc="The run's CosmologyTracker (None before setup).")

    # the options, as given (read-only; the validated values live in `config`)
    loss = property(lambda self: self.config.loss, doc="The per-sample loss, or None.")
    every_n_train_steps = property(lambda self: self.config.every_n_steps,
                                   doc="Probe interval, or None for log_every_n_steps.")
    top_k = property(lambda self: self.config.top_k, doc="Modes followed.")
    probe_size = property(lambda self: self.config.probe_size, doc="At most N probe samples.")
    log_figures_every_n_steps = property(lambda self: self.config.log_figures_every_n_steps,
                                         doc="Figure interval, or None.")
    prefix = property(lambda self: self.config.prefix, doc="Prepended to every tag.")
    history_size = property(lambda self: self.config.history_size, doc="Probes kept.")

    def _take(self, batch: Any, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return take_probe_batch(batch, size, input_key=self.config.input_key,
                                label_key=self.config.label_key)

    @property
    def state_key(self) -> str:
        """The checkpoint key: the class and the options, so several monitors coexist."""
        return f"{type(self).__qualname__}{self.config.key()}"

    # ----- configuration ---------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Check the Trainer's configuration and build the tracker (fit only)."""
        if stage != "fit":
            return
        self._check_trainer(trainer)
        every = self.config.every_n_steps
        if every is None:
            every = trainer.log_every_n_steps
            if not every or every < 1:
                raise ValueError(
                    f"CosmologyMonitor: Trainer(log_every_n_steps={every!r}) gives no probe "
                    "interval. Fix: pass CosmologyMonitor(every_n_train_steps=...) or set "
                    "Trainer(log_every_n_steps=...) ≥ 1."
                )
        config = dataclasses.replace(self.config.with_interval(every),
                                     distributed=trainer.world_size > 1)
        cls = type(pl_module)
        if getattr(cls, "forward", None) is getattr(self._lightning_module_cls, "forward", None):
            raise ValueError(
                f"CosmologyMonitor: {cls.__name__} does not define forward(); the monitor "
                "evaluates the model on the probe batch through it. Fix: define "
                "forward(inputs) returning the outputs your loss is applied to."
            )
        if self.tracker is None or self.tracker.model is not pl_module:
            self.session.start(pl_module, config)  # restores a checkpoint's pending state

    def _check_trainer(self, trainer: Any) -> None:
        if not isinstance(trainer, self._trainer_cls):
            pl = type(trainer).__module__.startswith("pytorch_lightning")
            kind = "pytorch_lightning.Trainer" if pl else "lightning.pytorch.Trainer"
            other = "cosmo_optim.callbacks.pytorch_lightning" if pl else "cosmo_optim.callbacks"
            raise self._misconfiguration(
                f"CosmologyMonitor from {self._import} was given a {kind}, whose loggers it "
                f"does not recognise (histograms, layout and figures would be lost). Fix: from "
                f"{other} import CosmologyMonitor."
            )
        sharded = [c.__name__ for c in type(trainer.strategy).__mro__
                   if c.__name__ in ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")]
        if trainer.world_size > 1 and sharded:
            raise self._misconfiguration(
                f"CosmologyMonitor: strategy {type(trainer.strategy).__name__} shards the "
                "parameters across ranks, and the probe's NTK needs every rank to hold all of "
                "them. Fix: use strategy='ddp' (the kernel is then split across ranks), or "
                "remove the monitor."
            )
        if not trainer.loggers:
            raise self._misconfiguration(
                "Cannot use `CosmologyMonitor` callback with `Trainer` that has no logger. "
                "Fix: pass Trainer(logger=TensorBoardLogger(...)) (or any logger), or use "
                "cosmo_optim.CosmologyTracker(sink=...) without a logger."
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Read the optimiser; have the Trainer's one hyperparameter write carry ours.

        Lightning logs the module's hparams right after this hook, and TensorBoard's HPARAMS
        table keeps the first write of a run: a second write (ours) would leave the
        ``cosmology/*`` columns blank and log ``hp_metric`` twice. So the next
        ``log_hyperparams`` call of each logger is merged with ours (`on_train_start` writes
        ours alone if Lightning made no such call).
        """
        tracker = self.session.running()
        if len(trainer.optimizers) > 1:
            warnings.warn(
                f"CosmologyMonitor: {len(trainer.optimizers)} optimisers; the universe and the "
                "e-folds are read from the first one (its steps only).",
                stacklevel=2,
            )
        if trainer.optimizers:
            tracker.observe(trainer.optimizers[0])
        for logger in trainer.loggers:
            _merge_next_hparams(logger, self.session.hparams())

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Write the physics hyperparameters where Lightning wrote none (no module hparams)."""
        for logger in trainer.loggers:
            pending = logger.__dict__.pop("log_hyperparams", None)
            if pending is not None:
                pending({})

    # ----- the hooks that act ------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Take the probe batch from the first training batch; probe the initial state."""
        if trainer.sanity_checking:
            return
        if not self.session.running().has_probe:  # the given probe batch or the first batch
            self.session.set_probe(self.session.shared_probe(
                trainer.is_global_zero, lambda: self.probe_batch or self._take(
                    batch, self.config.probe_size), lambda p: trainer.strategy.broadcast(p, src=0)),
                batch_size(batch, input_key=self.config.input_key)
                * trainer.accumulate_grad_batches)  # samples per optimiser step
        self._log(trainer, self.session.first_probe(trainer.global_step), 0)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Act once per optimiser step (repeated global steps under accumulation are ignored)."""
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        self._log(trainer, self.session.running().step(step), step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """With figures enabled, draw those of the whole run once more, at the last probe."""
        if trainer.is_global_zero:
            self.session.finish(lambda: self._writers(trainer))

    # ----- output ------------------------------------------------------------------------------
    def _writers(self, trainer: Any) -> list[Any]:
        """A ``TensorBoardLogger``'s writer (everything) or a logger's image API (figures)."""
        return self.session.targets(trainer.loggers, lambda logger: logger.experiment if (
            isinstance(logger, self._tensorboard_logger_cls)) else None)

    def _log(self, trainer: Any, metrics: dict[str, float] | None, step: int) -> None:
        if metrics:  # every rank computed the same values: callbacks such as EarlyStopping agree
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        self.session.write(lambda: self._writers(trainer) if trainer.is_global_zero else [],
                           metrics, step, lambda m: [  # rank-zero-only methods
                               logger.log_metrics(m, step=step) for logger in trainer.loggers])

    # ----- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The tracker's state: counters, history, probe set and reference basis."""
        return self.session.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the tracker: the run continues without gaps or duplicated readings."""
        self.session.load_state_dict(state_dict)


def _merge_next_hparams(logger: Any, ours: dict[str, Any]) -> None:
    """Make the logger's next ``log_hyperparams(params, ...)`` write ``{**params, **ours}``,
    once (an instance attribute shadowing the method, removed on that call)."""
    original = logger.log_hyperparams

    def merged(params: Any, *args: Any, **kwargs: Any) -> Any:
        logger.__dict__.pop("log_hyperparams", None)
        theirs = vars(params) if hasattr(params, "__dict__") and not isinstance(
            params, Mapping) else dict(params or {})
        return original({**theirs, **ours}, *args, **kwargs)

    logger.log_hyperparams = merged
