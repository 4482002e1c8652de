"""Framework integrations: `cosmo_optim.callbacks`.

Importing this package imports no framework: `CosmologyMonitor` (for ``lightning.pytorch``)
and `CosmologyCallback` (Hugging Face ``transformers``) load their module on first access.
The ``pytorch_lightning`` variant is `cosmo_optim.callbacks.pytorch_lightning.CosmologyMonitor`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CosmologyCallback", "CosmologyMonitor"]

_LAZY = {
    "CosmologyMonitor": "cosmo_optim.callbacks.lightning",
    "CosmologyCallback": "cosmo_optim.callbacks.huggingface",
}


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
