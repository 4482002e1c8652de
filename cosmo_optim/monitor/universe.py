"""What the observed optimiser says about the universe: its de Sitter dual (if it has one),
the e-folds each of its steps adds (T9), and the warnings when part of the read-out is missing.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.optim import Optimizer

from cosmo_optim.cosmology import Cosmology
from cosmo_optim.monitor.checks import foreign_optimizer_warning
from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.tags import scalar_tags
from cosmo_optim.optim import cosmology_of

if TYPE_CHECKING:
    from cosmo_optim.monitor.state import RunState

__all__ = [
    "OptimizerWatch", "StepUniverse", "cosmology_or_none", "dual_warnings", "efolds_per_step",
    "unwrap_optimizer", "zero_lr_warning",
]


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


def efolds_per_step(optimizer: Optimizer | None, group: int) -> float:
    """The e-folds the group's next step adds, H Δt = (1 − β)/3 (T9); 0 without heavy-ball form.

    H Δt does not depend on lr, so a step with lr = 0 (a warm-up's first, a decay's last)
    counts too: it is the η → 0 limit of the same expression, and N_e = n (1 − β)/3 counts
    every step n (T9). Such a step only lacks H, Λ and the dual, which need Δt = sqrt(lr) > 0.
    """
    if optimizer is None:
        return 0.0
    try:
        return _form_of(optimizer, group).efolds_per_step
    except ValueError:
        return 0.0


class StepUniverse:
    """The universe of each optimiser step, read from the (lr, momentum) that step used (T3, T9).

    `before_step` runs as a step pre-hook, so it sees the group's values before a scheduler
    changes them for the next step (Lightning and the Hugging Face Trainer step the scheduler
    before their step-end hooks). Each step adds H Δt = (1 − β)/3 e-folds (T9), whatever its
    lr: a step with lr = 0 adds them too (the η → 0 limit; `efolds_per_step`), but has no dual
    (Δt = sqrt(lr) = 0), so no H or Λ. Nothing is cached across steps: a warm-up from 0 or a
    decay to 0 never leaves a state that sticks.
    """

    def __init__(self) -> None:
        self.used: Cosmology | None = None  # the latest step's universe (None: no dual)
        self.used_lr: float | None = None  # the latest step's lr (None: no step seen yet)
        self.zero_lr_step: int | None = None  # the first step seen with lr = 0

    def before_step(self, optimizer: Optimizer, group: int, step: int) -> float:
        """Record the universe step `step` is about to use; its e-folds (T9)."""
        self.used_lr = _lr_of(optimizer, group)
        self.used = cosmology_or_none(optimizer, group)
        if self.used_lr == 0.0 and self.zero_lr_step is None:
            self.zero_lr_step = step
        return efolds_per_step(optimizer, group)

    def current(self, optimizer: Optimizer | None, group: int) -> Cosmology | None:
        """The universe of the latest step (before any: of the coming one, the live values)."""
        if self.used_lr is None:
            return cosmology_or_none(optimizer, group)
        return self.used


class OptimizerWatch:
    """The optimiser a tracker reads: its universe at each step, the e-folds each step adds
    (T9, through a step pre-hook), and the warnings said once (no dual, param groups that
    differ, a step with lr = 0). Each method takes the tracker's current `MonitorConfig`
    (its `group`, and the tags named in warnings).

    Args:
        optimizer: the optimiser read before `observe` is called, if any.
    """

    def __init__(self, optimizer: Optimizer | None = None) -> None:
        self.optimizer = optimizer
        self.hooks: list[Any] = []
        self._universe = StepUniverse()
        self._warned: set[int] = set()
        self._zero_lr_warned = False

    @property
    def observing(self) -> bool:
        """Whether a hook counts the optimiser's steps (else the live values are read)."""
        return bool(self.hooks)

    def cosmology(self, config: MonitorConfig) -> Cosmology | None:
        """The universe of the latest step (before any step, or not observing: the live one)."""
        if not self.hooks:
            return cosmology_or_none(self.optimizer, config.group)
        return self._universe.current(self.optimizer, config.group)

    def hyperparameters(self, config: MonitorConfig) -> dict[str, Any]:
        """The physics hyperparameters of the run (T3: `Cosmology`'s lr, momentum, time step,
        Hubble rate, vacuum energy and Hubble time) and the monitor's settings, by tag."""
        params: dict[str, Any] = {"cosmo_optim/probe_size": config.probe_size,
                                  "cosmo_optim/top_k": config.top_k,
                                  f"cosmo_optim/{config.interval_name}": config.interval}
        cosmology = self.cosmology(config)
        if cosmology is not None:
            params.update({f"cosmology/{name}": getattr(cosmology, name) for name in (
                "lr", "momentum", "time_step", "hubble_rate", "vacuum_energy",
                "hubble_time_steps")})
        return {config.prefix + k: v for k, v in params.items()}

    def efolds_per_step(self, config: MonitorConfig) -> float:
        """The e-folds of each step at the live (lr, momentum) (T9), for a tracker that is
        not observing the optimiser's steps."""
        return efolds_per_step(self.optimizer, config.group)

    def observe(self, optimizer: Optimizer, run: RunState, config: MonitorConfig,
                model: nn.Module) -> None:
        """Watch `optimizer`: before each of its steps, add that step's e-folds to `run`
        (a warning if it updates none of `model`'s parameters)."""
        optimizer = unwrap_optimizer(optimizer)
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"Invalid optimizer: {optimizer!r}; it must be a torch Optimizer.")
        groups = len(optimizer.param_groups)
        if not -groups <= config.group < groups:
            raise ValueError(
                f"Invalid group={config.group!r}: the optimiser has {groups} param group(s), so "
                f"the monitor has no group to read. Fix: group= an index in [0, {groups - 1}] "
                "(the param group whose lr and momentum are the universe)."
            )
        self.detach()
        self.optimizer = optimizer
        if id(optimizer) not in self._warned:
            self._warned.add(id(optimizer))
            messages = dual_warnings(optimizer, config)
            if (foreign := foreign_optimizer_warning(model, optimizer)) is not None:
                messages.append(foreign)
            for message in messages:
                warnings.warn(message, UserWarning, stacklevel=4)

        def count(opt: Optimizer, args: Any, kwargs: Any) -> None:
            efolds = self._universe.before_step(opt, config.group, run.last_step + 1)
            run.efolds += efolds
            step = self._universe.zero_lr_step  # without heavy-ball form (efolds 0) no dual is lost
            if step is not None and efolds > 0 and not self._zero_lr_warned:
                self._zero_lr_warned = True
                warnings.warn(zero_lr_warning(step, config), UserWarning, stacklevel=3)

        self.hooks.append(optimizer.register_step_pre_hook(count))

    def detach(self) -> None:
        """Remove every hook (the step post-hooks of `CosmologyTracker.attach` too)."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()


def _lr_of(optimizer: Optimizer, group: int) -> float | None:
    groups = optimizer.param_groups
    if not -len(groups) <= group < len(groups) or groups[group].get("lr") is None:
        return None
    return float(groups[group]["lr"])


def zero_lr_warning(step: int, config: MonitorConfig) -> str:
    """The one warning of a run whose schedule reaches lr = 0 (a warm-up from 0, a decay to 0)."""
    return (
        f"CosmologyTracker: optimiser step {step} used lr = 0 in group {config.group}: a step "
        "with lr = 0 does not move the weights and has no de Sitter dual (Δt = sqrt(lr) = 0), "
        "so a reading right after it logs no Hubble rate, vacuum energy, e-folds or dual tags; "
        "it still counts (1 − β)/3 e-folds, as every step does (docs/theory.md T9). Said once "
        "per run; the read-out resumes at the next step with lr > 0 (e.g. after a warm-up "
        "from 0)."
    )


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
        _form_of(optimizer, config.group)
    except ValueError as error:
        tags = [t for t in scalar_tags(config.top_k, dual=False, prefix=config.prefix)
                if not t.endswith("cosmology/field")]
        out.append(
            f"CosmologyTracker: no de Sitter dual for {name}: {error} No Hubble rate, vacuum "
            "energy, e-folds, potential, Ω_φ, slow roll, masses or forecast are reported "
            "(T3–T10), and the residual still tests the frozen kernel, whatever the optimiser "
            f"(T12); still logged: {', '.join(tags)} (and cosmology/field for one output per "
            "sample)."
        )
    return out


def _form_of(optimizer: Optimizer, group: int) -> Cosmology:
    """`cosmology_of` on the optimiser's form only (at lr = 0: the universe of lr = 1, for its
    β): a scheduler's lr = 0 (a warm-up's first step) is a step without a dual, said by
    `zero_lr_warning`, not an optimiser without one. The group's lr is restored at once."""
    groups = optimizer.param_groups
    if -len(groups) <= group < len(groups) and groups[group].get("lr") == 0:
        saved = groups[group]["lr"]
        groups[group]["lr"] = 1.0
        try:
            return cosmology_of(optimizer, group)
        finally:
            groups[group]["lr"] = saved
    return cosmology_of(optimizer, group)
