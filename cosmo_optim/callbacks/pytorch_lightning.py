"""`CosmologyMonitor` for the standalone `pytorch_lightning` package (T3–T10): a thin adaptor.

All the work is done by `cosmo_optim.monitor.CosmologyTracker`; the shared Lightning plumbing
lives in `cosmo_optim.callbacks._mixin`. The same callback for `lightning.pytorch` is
`cosmo_optim.callbacks.lightning.CosmologyMonitor` (the two class hierarchies are distinct).
"""

from __future__ import annotations

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from ._mixin import CosmologyMonitorMixin

__all__ = ["CosmologyMonitor"]


class CosmologyMonitor(CosmologyMonitorMixin, Callback):
    """`cosmo_optim.callbacks.lightning.CosmologyMonitor` for ``pytorch_lightning`` users.

    Same arguments, tags and behaviour; see that class for the full documentation.

    Example:
        >>> monitor = CosmologyMonitor(every_n_train_steps=10)
        >>> monitor.config.every_n_steps
        10
    """

    _tensorboard_logger_cls = TensorBoardLogger
    _lightning_module_cls = LightningModule
    _trainer_cls = Trainer
    _sharding = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
    _import = "cosmo_optim.callbacks.pytorch_lightning"
    _misconfiguration = MisconfigurationException
