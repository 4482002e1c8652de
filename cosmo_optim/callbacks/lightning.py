"""`CosmologyMonitor` for `lightning.pytorch` (docs/theory.md T3–T10): a thin adaptor.

All the work is done by `cosmo_optim.monitor.CosmologyTracker`; the shared Lightning plumbing
lives in `cosmo_optim.callbacks._mixin`. The same callback for the standalone
`pytorch_lightning` package is `cosmo_optim.callbacks.pytorch_lightning.CosmologyMonitor`.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ._mixin import CosmologyMonitorMixin

__all__ = ["CosmologyMonitor"]


class CosmologyMonitor(CosmologyMonitorMixin, Callback):
    r"""Log the universe dual to training: Hubble rate, potential, modes (docs/theory.md T3–T10).

    Every ``every_n_train_steps`` optimiser steps (and once before the first step) it evaluates
    the model on a fixed probe batch, computes the empirical NTK and its top modes there, and
    reads off the FLRW dual of `cosmo_optim.dual.FLRWDual`. It never changes training: weights
    are bit-for-bit those of a run without it. Scalars go to every logger (and to
    ``trainer.callback_metrics``, so ``EarlyStopping``/``ModelCheckpoint`` can monitor them);
    a ``TensorBoardLogger`` additionally receives histograms, one custom-scalars layout, tag
    descriptions with units, a verdicts card, the physics hyperparameters and, when
    ``log_figures_every_n_steps`` is set, figures (W&B and MLflow loggers get the figures
    through their image API; others, such as CSV, one warning naming what is dropped). Its state
    is saved in checkpoints, so a run resumed with ``ckpt_path`` continues its histories. Under
    DDP the probe set is taken on rank 0 and broadcast, each rank computes the kernel features
    of its shard of it (``empirical_ntk(distributed=True)``), every rank reads out the same
    values and only rank 0 writes. Strategies that shard parameters (FSDP, DeepSpeed) are
    refused at ``setup``.

    Args:
        loss: the training loss, e.g. ``nn.CrossEntropyLoss()``; None skips the tags that
            need ℓ.
        every_n_train_steps: `MonitorConfig`'s ``every_n_steps`` in Lightning's spelling;
            default the Trainer's ``log_every_n_steps``.
        probe_batch: a Tensor or NumPy array of inputs, ``(inputs, targets)`` or a dict
            batch; default the first ``probe_size`` samples of the first training batch.

    Every other argument (``top_k``, ``probe_size``, ``log_figures_every_n_steps``,
    ``prefix``, ``history_size``, ``verify_ntk``, ``ntk_method``, ``sketch_dim``, ``group``,
    ``output``, ``input_key``, ``label_key``) is the `cosmo_optim.monitor.MonitorConfig`
    option of that name, documented there once. ``distributed`` and ``train_batch_size``
    are set from the Trainer (DDP; its batch size × ``accumulate_grad_batches``).

    Raises:
        ValueError: in ``__init__`` for an invalid argument; in ``setup()`` for a Trainer
            without a probe interval, a figure interval that is not a multiple of it, or a
            LightningModule without ``forward``; a `MisconfigurationException` for a Trainer
            without a logger or with a parameter-sharding strategy. Each message names the fix.

    Logged tags: the scalars of `cosmo_optim.monitor.SCALAR_TAGS` (``{k}`` = 1..top_k;
    the meaning of each in ``docs/callbacks.md``), the histograms of
    `cosmo_optim.monitor.tags.HISTOGRAM_TAGS` and, with ``log_figures_every_n_steps`` set, the
    figures of `cosmo_optim.monitor.tags.FIGURE_TAGS`. Without a heavy-ball momentum-SGD
    optimiser (Adam, RMSprop, Nesterov, ...) there is no de Sitter dual: the tags that need it
    are absent and the monitor warns once, naming the tags still logged.

    Example:
        >>> from torch import nn
        >>> monitor = CosmologyMonitor(nn.CrossEntropyLoss(), every_n_train_steps=25, top_k=3)
        >>> monitor.top_k
        3
        >>> # trainer = lightning.pytorch.Trainer(callbacks=[monitor]); trainer.fit(model, data)
    """

    _tensorboard_logger_cls = TensorBoardLogger
    _lightning_module_cls = LightningModule
    _trainer_cls = Trainer
    _import = "cosmo_optim.callbacks"
    _misconfiguration = MisconfigurationException
