"""Lightning plumbing shared by `lightning.pytorch` and `pytorch_lightning` (imports neither).

`lightning.CosmologyMonitor` and `pytorch_lightning.CosmologyMonitor` are this mixin on their
package's `Callback`; the work is `cosmo_optim.monitor.session.MonitorSession`'s, through the
`Port` below (Lightning's rank zero, broadcast, loggers and step).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch

from cosmo_optim.monitor import MonitorConfig
from cosmo_optim.monitor.batches import batch_size, take_probe_batch
from cosmo_optim.monitor.checks import sharding_error
from cosmo_optim.monitor.images import writers_of
from cosmo_optim.monitor.session import MonitorSession, Port
from cosmo_optim.monitor.sinks import write_hparams
from cosmo_optim.monitor.summary import RunSummary

__all__ = ["CosmologyMonitorMixin"]


class CosmologyMonitorMixin:
    """Framework-agnostic body of `CosmologyMonitor`; subclasses set the class attributes."""

    # the package's classes: its TensorBoard logger, LightningModule and Trainer, the strategies
    # whose ranks hold a shard of the parameters, and the error LearningRateMonitor raises
    _tensorboard_logger_cls: Any = type(None)
    _lightning_module_cls: type = type(None)
    _trainer_cls: Any = type(None)
    _sharding: tuple[type, ...] = ()
    _import = ""
    _misconfiguration: type[Exception] = ValueError

    def __init__(self, loss: Any = None, *, every_n_train_steps: int | None = None,
                 top_k: int = 4, probe_batch: Any = None, probe_size: int = 16,
                 log_figures_every_n_steps: int | None = None, prefix: str = "",
                 history_size: int = 1000, verify_ntk: bool = False, ntk_method: str = "exact",
                 sketch_dim: int | None = None, group: int = 0,
                 output: str | Callable[[Any], torch.Tensor] | None = None,
                 input_key: str | None = None, label_key: str | None = None) -> None:
        super().__init__()
        self.config = MonitorConfig(
            loss, probe_size, top_k, every_n_train_steps, log_figures_every_n_steps,
            history_size, prefix, group, output, verify_ntk=verify_ntk, ntk_method=ntk_method,
            sketch_dim=sketch_dim, input_key=input_key, label_key=label_key,
            interval_name="every_n_train_steps")
        self.probe_batch = None if probe_batch is None else take_probe_batch(
            probe_batch, probe_size, input_key=input_key, label_key=label_key)
        self.session = MonitorSession("CosmologyMonitor")

    tracker = property(lambda self: self.session.tracker,
                       doc="The run's CosmologyTracker (None before training starts).")

    @property
    def state_key(self) -> str:
        """The checkpoint key: the class and the options, so several monitors coexist."""
        return f"{type(self).__qualname__}{self.config.key()}"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Refuse what cannot work before any training time is spent (fit only)."""
        if stage != "fit":
            return
        if not isinstance(trainer, self._trainer_cls):
            pl = type(trainer).__module__.startswith("pytorch_lightning")
            kind, other = (("pytorch_lightning.Trainer", "cosmo_optim.callbacks.pytorch_lightning")
                           if pl else ("lightning.pytorch.Trainer", "cosmo_optim.callbacks"))
            raise self._misconfiguration(
                f"CosmologyMonitor from {self._import} was given a {kind}, whose loggers it "
                f"does not recognise (histograms, layout and figures would be lost). Fix: from "
                f"{other} import CosmologyMonitor.")
        if trainer.world_size > 1 and isinstance(trainer.strategy, self._sharding):
            raise self._misconfiguration(sharding_error(
                f"CosmologyMonitor: strategy {type(trainer.strategy).__name__}",
                "use strategy='ddp'"))
        if not trainer.loggers:
            raise self._misconfiguration(
                "Cannot use `CosmologyMonitor` callback with `Trainer` that has no logger. "
                "Fix: pass Trainer(logger=TensorBoardLogger(...)) (or any logger), or use "
                "cosmo_optim.CosmologyTracker(sink=...) without a logger.")
        if self.config.every_n_steps is None and not trainer.log_every_n_steps:
            raise ValueError(
                f"CosmologyMonitor: Trainer(log_every_n_steps={trainer.log_every_n_steps!r}) "
                "gives no reading interval. Fix: pass CosmologyMonitor(every_n_train_steps=...) "
                "or set Trainer(log_every_n_steps=...) ≥ 1.")
        if type(pl_module).forward is getattr(self._lightning_module_cls, "forward", None):
            raise ValueError(
                f"CosmologyMonitor: {type(pl_module).__name__} does not define forward(); the "
                "monitor evaluates the model on the probe batch through it. Fix: define "
                "forward(inputs) returning the outputs your loss is applied to.")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the run's tracker on the first optimiser; log the physics hyperparameters."""
        if len(trainer.optimizers) > 1:
            warnings.warn(f"CosmologyMonitor: {len(trainer.optimizers)} optimisers; the universe "
                          "and the e-folds are read from the first one (its steps only).",
                          UserWarning, stacklevel=2)
        config = self.config.with_interval(self.config.every_n_steps or trainer.log_every_n_steps)
        tracker = self.session.start(
            pl_module, dataclasses.replace(config, distributed=trainer.world_size > 1),
            port=_LightningPort(trainer, pl_module, self._tensorboard_logger_cls),
            optimizer=trainer.optimizers[0] if trainer.optimizers else None)
        ours = tracker.hyperparameters()
        theirs = {**(getattr(trainer.datamodule, "hparams_initial", None) or {}),
                  **pl_module.hparams_initial}
        for logger in trainer.loggers:  # TensorBoard's HPARAMS keeps a run's first record
            if isinstance(logger, self._tensorboard_logger_cls) and trainer.is_global_zero:
                logger.log_hyperparams(ours, metrics={})  # hparams.yaml; no record yet
                write_hparams(logger.experiment, {**theirs, **ours},
                              ["hp_metric"] if theirs else [])  # Lightning logs hp_metric
            else:
                logger.log_hyperparams(ours)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        """The probe batch (the data set's first samples, else every rank's first batch) and
        the reading of the initial weights (step 0)."""
        if not trainer.sanity_checking:
            self.session.share_probe(self.probe_batch, trainer.train_dataloader, batch,
                                     train_batch_size=trainer.accumulate_grad_batches * batch_size(
                                         batch, input_key=self.config.input_key))
            self.session.on_step(trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """A reading when due, once per optimiser step (accumulated batches repeat it)."""
        if not trainer.sanity_checking:
            self.session.on_step(trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """The final figures (if enabled) and the run's summary table on the console."""
        self.session.end()

    def summary(self) -> RunSummary:
        """What the run's readings say (`cosmo_optim.monitor.summary.RunSummary`)."""
        return self.session.summary()

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state: counters, history, probe batch and reference basis."""
        return self.session.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the tracker: the run continues without gaps or duplicated readings."""
        self.session.load_state_dict(state_dict)


class _LightningPort(Port):
    """Lightning as the session sees it. A reading after n optimiser steps is logged on
    Lightning's own step for the batch whose update made those weights, n − 1, as its other
    callbacks log (so CSV rows line up with ``train_loss``); its scalars also go to
    ``callback_metrics`` (EarlyStopping, ModelCheckpoint) through ``LightningModule.log``."""

    def __init__(self, trainer: Any, module: Any, tensorboard: Any) -> None:
        self.trainer, self.module, self.tensorboard = trainer, module, tensorboard

    def rank_zero(self) -> bool:
        return bool(self.trainer.is_global_zero)

    def broadcast(self, value: Any) -> Any:
        return self.trainer.strategy.broadcast(value, src=0)

    def step(self, step: int) -> int:
        return max(step - 1, 0)

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        self.module.log_dict(metrics, on_step=True, on_epoch=False, logger=False)
        for logger in self.trainer.loggers:  # rank-zero-only methods
            logger.log_metrics(metrics, step=step)

    def writers(self) -> tuple[list[Any], list[str]]:
        def writer(logger: Any) -> Any:
            return logger.experiment if isinstance(logger, self.tensorboard) else None

        return writers_of(self.trainer.loggers, writer)
