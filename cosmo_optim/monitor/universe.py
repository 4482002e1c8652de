"""What the observed optimiser says about the universe: its de Sitter dual (if it has one),
the e-folds each of its steps adds (T9), and the warnings when part of the read-out is missing.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.tags import scalar_tags
from cosmo_optim.optim import cosmology_of

__all__ = ["EfoldsRate", "cosmology_or_none", "dual_warnings", "unwrap_optimizer"]


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimiser inside a framework's wrapper (accelerate's ``AcceleratedOptimizer``
    ``.optimizer``, Lightning's ``LightningOptimizer`` ``._optimizer``), else `optimizer`."""
    for _ in range(8):  # wrappers of wrappers, never a cycle
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, Optimizer) or inner is optimizer:
            return optimizer
        optimizer = inner
    return optimizer


def cosmology_or_none(optimizer: Optimizer | None, group: int) -> Cosmology | None:
    """The de Sitter universe of `group` (T3), or None: no optimiser, no such group, or no
    heavy-ball momentum-SGD form (Adam, RMSprop, Nesterov, dampening)."""
    if optimizer is None:
        return None
    try:
        return cosmology_of(optimizer, group)
    except ValueError:
        return None


class EfoldsRate:
    """(1 − β)/3 of the tracked group (T9), 0 without a de Sitter dual.

    Read after every optimiser step, so it is cached on what it depends on: the momentum
    (and the form of the optimiser), not the learning rate a scheduler changes every step.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._rate = 0.0

    def __call__(self, optimizer: Optimizer | None, group: int) -> float:
        groups = optimizer.param_groups if optimizer is not None else []
        g = groups[group] if -len(groups) <= group < len(groups) else {}
        key = (id(optimizer), type(optimizer), *(
            None if g.get(name) is None else float(g[name])
            for name in ("momentum", "nesterov", "dampening")
        ))
        if self._key != key:
            cosmology = cosmology_or_none(optimizer, group)
            self._rate = 0.0 if cosmology is None else cosmology.efolds_per_step
            self._key = key
        return self._rate


def dual_warnings(optimizer: Optimizer, config: MonitorConfig) -> list[str]:
    """Why part of the read-out is missing or approximate for this optimiser: groups
    with different (lr, momentum), or no heavy-ball dual at all. Empty when all is measured."""
    out = []
    groups = optimizer.param_groups
    pairs = {(g.get("lr"), g.get("momentum")) for g in groups}
    name = type(optimizer).__name__
    if len(pairs) > 1:
        out.append(
            f"CosmologyTracker: the param groups of {name} differ in (lr, momentum) "
            f"({sorted(pairs, key=repr)}); the universe is read from group {config.group} only. "
            "Fix: pass group=... to choose the group, or use one (lr, momentum)."
        )
    try:
        cosmology_of(optimizer, config.group)
    except ValueError as error:
        tags = scalar_tags(config.top_k, dual=False, loss=config.loss is not None,
                           prefix=config.prefix)
        out.append(
            f"CosmologyTracker: no de Sitter dual for {name}: {error} No Hubble rate, vacuum "
            "energy, e-folds, potential, Ω_φ, slow roll, masses or duality residual are "
            f"reported; still logged: {', '.join(tags)}."
        )
    return out
