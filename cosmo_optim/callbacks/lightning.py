"""`CosmologyMonitor` for `lightning.pytorch` (docs/theory.md T3–T12): a thin adaptor.

The work is `cosmo_optim.monitor.session.MonitorSession`'s; the Lightning plumbing shared with
the standalone `pytorch_lightning` package (`cosmo_optim.callbacks.pytorch_lightning`) lives in
`cosmo_optim.callbacks._mixin`.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ._mixin import CosmologyMonitorMixin

__all__ = ["CosmologyMonitor"]


class CosmologyMonitor(CosmologyMonitorMixin, Callback):
    r"""Log the universe dual to training: Hubble rate, potential, modes (docs/theory.md T3–T12).

    Every ``every_n_train_steps`` optimiser steps (and once before the first step) it evaluates
    the model on a fixed probe batch, computes the empirical NTK and its modes there, reads off
    the FLRW dual of `cosmo_optim.dual.FLRWDual` and tests it (the residual of T12). It never
    changes training: weights are bit-for-bit those of a run without it. Scalars go to every
    logger on Lightning's own step (the reading after n steps at n − 1, as Lightning logs that
    batch's ``train_loss``) and to ``callback_metrics`` (EarlyStopping, ModelCheckpoint); a
    ``TensorBoardLogger`` also gets the charts this run fills, log10 views, histograms, tag
    descriptions, verdict cards, the physics hyperparameters and, with
    ``log_figures_every_n_steps``, figures (W&B and MLflow loggers the figures; others, such as
    CSV, one warning naming what is dropped). The probe batch is the first ``probe_size``
    samples of the training data set (the same on any number of processes), else of the ranks'
    first batches. At the end of training the run's summary is logged as a table (`summary()`
    returns it as data). Its state is saved in checkpoints. Under DDP every rank computes the
    kernel features of its shard of the probe batch and reads out the same values; only rank 0
    writes. Strategies that shard parameters (FSDP, DeepSpeed) are refused at ``setup``.

    Args:
        loss: the training loss, e.g. ``nn.CrossEntropyLoss()``; None skips the tags that
            need ℓ.
        every_n_train_steps: `MonitorConfig`'s ``every_n_steps`` in Lightning's spelling;
            default the Trainer's ``log_every_n_steps``.
        probe_batch: a Tensor or NumPy array of inputs, ``(inputs, targets)`` or a dict
            batch; default the first ``probe_size`` samples of the training data set.

    Every other argument (``top_k``, ``probe_size``, ``log_figures_every_n_steps``,
    ``prefix``, ``history_size``, ``verify_ntk``, ``ntk_method``, ``sketch_dim``, ``group``,
    ``output``, ``input_key``, ``label_key``) is the `cosmo_optim.monitor.MonitorConfig`
    option of that name, documented there once. ``distributed`` and ``train_batch_size``
    are set from the Trainer (DDP; its batch size × ``accumulate_grad_batches``).

    Raises:
        ValueError: in ``__init__`` for an invalid argument; in ``setup()`` for a Trainer
            without a reading interval or a LightningModule without ``forward``; a
            `MisconfigurationException` for a Trainer without a logger or with a
            parameter-sharding strategy. Each message names the fix.

    Logged tags: `cosmo_optim.monitor.SCALAR_TAGS` (``{k}`` = 1..top_k; their meaning in
    ``docs/callbacks.md``), `cosmo_optim.monitor.tags.HISTOGRAM_TAGS` and, with figures on,
    `cosmo_optim.monitor.tags.FIGURE_TAGS`. Without a heavy-ball momentum-SGD optimiser (Adam,
    RMSprop, Nesterov, ...) there is no de Sitter dual: the tags that need it are absent and
    the monitor warns once.

    Example:
        >>> from torch import nn
        >>> monitor = CosmologyMonitor(nn.CrossEntropyLoss(), every_n_train_steps=25, top_k=3)
        >>> monitor.config.top_k
        3
        >>> # trainer = lightning.pytorch.Trainer(callbacks=[monitor]); trainer.fit(model, data)
    """

    _tensorboard_logger_cls = TensorBoardLogger
    _lightning_module_cls = LightningModule
    _trainer_cls = Trainer
    _sharding = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
    _import = "cosmo_optim.callbacks"
    _misconfiguration = MisconfigurationException
