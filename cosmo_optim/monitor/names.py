"""The monitor's former names, kept as deprecated aliases (issue #22 item 4: one word per thing).

A measurement of the monitor at a step is a *reading* (`CosmologyTracker.read`, `Reading`,
`cosmo_optim.monitor.reading`); the *probe batch* is the fixed samples it reads on. The former
names (`CosmologyTracker.probe`, `ProbeRecord`) still work and warn once each, naming the new
one.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["deprecated_method", "warn_renamed"]

_warned: set[str] = set()


def warn_renamed(old: str, new: str) -> None:
    """One DeprecationWarning per process saying that `old` is now `new`, attributed to the
    user's line (the first frame outside this package and the import machinery), so that
    Python's default filters show it there."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(f"{old} is deprecated: it is now {new} (same behaviour). Fix: use {new}.",
                  DeprecationWarning, stacklevel=_user_level())


def _user_level() -> int:
    """The `stacklevel` of the nearest caller outside cosmo_optim (`warnings` itself skips the
    import machinery's frames, so they are not counted)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            frame = frame.f_back
            continue
        if not name.startswith(package):
            return level
        frame, level = frame.f_back, level + 1
    return level


def deprecated_method(new: str, old: str) -> Callable[..., Any]:
    """A method `old` that warns once (`warn_renamed`) and calls the method named `new`."""

    def alias(self: Any, *args: Any, **kwargs: Any) -> Any:
        warn_renamed(old, f"{type(self).__name__}.{new}")
        return getattr(self, new)(*args, **kwargs)

    alias.__doc__ = f"Deprecated name of `{new}` (warns once)."
    return alias
