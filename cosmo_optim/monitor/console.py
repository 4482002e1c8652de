"""What the monitor says on the console, through logging (never ``print``): a line while a
reading runs longer than `SLOW_READING_SECONDS` and when it ends, and the run's summary table
at the end of training (`cosmo_optim.monitor.summary`).

Both go to the ``cosmo_optim.monitor.console`` logger at INFO. When the application has
configured no logging (the root logger has no handler), that logger gets a stderr handler of
its own and stops propagating, as Lightning does for its own logger; configure logging (or
``logging.getLogger("cosmo_optim.monitor.console").setLevel(logging.WARNING)``) to change that.
Only rank 0 of a distributed run speaks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Final

import torch

__all__ = ["SLOW_READING_SECONDS", "console", "rank_zero", "timed"]

#: A reading running longer than this many seconds gets a line while it runs and when it ends.
SLOW_READING_SECONDS: Final = 5.0

_LOGGER = logging.getLogger("cosmo_optim.monitor.console")


def console() -> logging.Logger:
    """The console logger (see the module docstring), its handler added on first use."""
    if not _LOGGER.handlers and not logging.getLogger().hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        _LOGGER.addHandler(handler)
        _LOGGER.propagate = False
    if _LOGGER.level == logging.NOTSET:
        _LOGGER.setLevel(logging.INFO)
    return _LOGGER


def rank_zero() -> bool:
    """Whether this process is rank 0 of ``torch.distributed`` (or the only one)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextlib.contextmanager
def timed(step: int, what: str, *, seconds: float = SLOW_READING_SECONDS) -> Iterator[None]:
    """Log a line after `seconds` if the reading at `step` still runs (from a timer thread), and
    one with its duration when it ends, if it took longer; `what` says what it computes."""
    if not rank_zero():
        yield
        return
    start = time.perf_counter()
    timer = threading.Timer(seconds, lambda: console().info(
        "CosmologyTracker: the reading at step %d has run for %.0f s (%s); training resumes "
        "when it ends.", step, time.perf_counter() - start, what))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        took = time.perf_counter() - start
        if took > seconds:
            console().info(
                "CosmologyTracker: the reading at step %d took %.1f s (%s). Fix: a smaller "
                "probe_size or a larger reading interval makes readings cheaper.", step, took,
                what)
