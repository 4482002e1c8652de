"""`CosmoSGD`: PyTorch's momentum SGD configured in physics units (docs/theory.md T1–T3, T11).

It is `torch.optim.SGD` with derived hyperparameters, not a new update rule: each param group
stores the ordinary `lr` and `momentum`, which stay authoritative (schedulers, checkpoints and
Lightning's `LearningRateMonitor` see plain SGD), and the physical view is derived from them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from cosmo_optim.cosmology import (
    UNITS,
    Cosmology,
    PowerLaw,
    from_units,
    lr_of,
    power_law_momentum,
    resolve_expansion,
)

__all__ = ["CosmoSGD", "as_cosmology", "cosmology_of"]

_SPEC_KEYS = ("cosmology", *UNITS, "expansion")


def _power_law_lr(spec: Mapping[str, Any], history: PowerLaw, where: str) -> float:
    """Under a power-law history only the time step is free: η = Δt² (T11)."""
    extra = sorted(
        k
        for k in ("cosmology", "vacuum_energy", "hubble_rate", "momentum")
        if spec.get(k) is not None
    )
    dt = spec.get("time_step")
    if extra or dt is None:
        raise ValueError(
            f"{where}: a power-law expansion (p={history.power:g}) sets the momentum "
            f"β_n = 1 − 3p/(n + n0) itself; give time_step alone (got {extra or 'no time_step'})."
        )
    return lr_of(dt, where)


def cosmology_of(optimizer: Optimizer, group: int = 0) -> Cosmology:
    """The de Sitter universe of one param group of any momentum-SGD optimiser (T3).

    Reads the group's current `lr` and `momentum`, so it follows schedulers; for a power-law
    `CosmoSGD` group it is the instantaneous universe of the coming step.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(3))
        >>> round(cosmology_of(torch.optim.SGD([p], lr=1e-3, momentum=0.9)).hubble_time_steps, 9)
        30.0
    """
    groups = optimizer.param_groups
    if not -len(groups) <= group < len(groups):
        raise ValueError(
            f"Invalid group={group!r}; the optimiser has {len(groups)} param group(s)."
        )
    g = groups[group]
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(
            f"{type(optimizer).__name__} is not heavy-ball momentum SGD, so it has no de Sitter "
            "dual (docs/theory.md T1, T3); use torch.optim.SGD or cosmo_optim.CosmoSGD."
        )
    if "momentum" not in g:
        raise ValueError(
            f"{type(optimizer).__name__} has no 'momentum' hyperparameter, so it has no "
            "de Sitter dual; use torch.optim.SGD or cosmo_optim.CosmoSGD."
        )
    if g.get("nesterov") or g.get("dampening", 0) != 0:
        raise ValueError(
            "The dual (docs/theory.md T1) is heavy-ball momentum with dampening=0 and "
            f"nesterov=False; this group has dampening={g.get('dampening')!r}, "
            f"nesterov={g.get('nesterov')!r}."
        )
    return Cosmology(float(g["lr"]), float(g["momentum"]))


class CosmoSGD(torch.optim.SGD):
    """Momentum SGD whose hyperparameters are a universe: Λ, H and Δt (T1–T3, T11).

    Give exactly two of ``vacuum_energy`` (Λ), ``hubble_rate`` (H), ``time_step``
    (Δt = sqrt(lr)) and ``momentum`` (β), or a ``cosmology``; they are converted once with T3
    into the group's ``lr`` and ``momentum``, which remain the stored, authoritative values.
    A param group may carry its own physics units (its keys override the constructor's of the
    same name), its own ``expansion``, or plain ``lr``/``momentum``. The update is
    `torch.optim.SGD`'s, bit for bit, and costs the same.

    ``expansion`` selects the history of the Hubble rate (T11): ``"de_sitter"`` (constant H,
    the paper; plain heavy-ball momentum), or a power law a ∝ t^p — ``"radiation"``
    (p = 1/2), ``"matter"`` (p = 2/3), ``"nesterov"`` (p = 1, the momentum schedule of
    Nesterov's accelerated gradient in heavy-ball form) or ``PowerLaw(p, n0)`` — where only
    ``time_step`` is given and the momentum of step n is β_n = 1 − 3p/(n + n0). The step
    counter lives in the group, so it survives ``state_dict()``/``load_state_dict()``.

    Args:
        params: parameters or param-group dicts, as for any optimiser.
        cosmology: a `Cosmology`, instead of two physics units.
        vacuum_energy: Λ = (1 − β)²/(3 lr), energy density in reduced Planck units.
        hubble_rate: H = (1 − β)/(3 sqrt(lr)), per unit of continuum time.
        time_step: Δt = sqrt(lr), continuum time per optimiser step.
        momentum: β in [0, 1).
        expansion: ``"de_sitter"``, ``"radiation"``, ``"matter"``, ``"nesterov"`` or a
            `PowerLaw`.
        weight_decay, maximize, foreach, differentiable, fused: as for `torch.optim.SGD`.
        lr: refused with a ValueError pointing at ``Cosmology.from_sgd(lr, momentum)`` (to
            keep the physics view) and ``torch.optim.SGD`` (plain SGD).

    Raises:
        ValueError: the units do not name one universe (wrong count, Λ with H, momentum < 0),
            with the bound that was violated and how to fix it.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = CosmoSGD(model.parameters(), vacuum_energy=3.3, time_step=0.03)
        >>> opt.param_groups[0]["lr"], round(opt.param_groups[0]["momentum"], 4)
        (0.0009, 0.9056)
        >>> round(opt.cosmology().hubble_rate, 4)
        1.0488
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        cosmology: Cosmology | None = None,
        vacuum_energy: float | None = None,
        hubble_rate: float | None = None,
        time_step: float | None = None,
        momentum: float | None = None,
        expansion: str | PowerLaw = "de_sitter",
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        lr: float | None = None,
    ) -> None:
        if lr is not None:
            beta = 0.0 if momentum is None else momentum
            raise ValueError(
                f"CosmoSGD takes physics units, not lr={lr!r}. Fix: CosmoSGD(params, "
                f"cosmology=Cosmology.from_sgd(lr={lr!r}, momentum={beta!r})), or "
                f"torch.optim.SGD(params, lr={lr!r}, momentum={beta!r}) (the monitor reads both)."
            )
        self._spec = {
            "cosmology": cosmology,
            "vacuum_energy": vacuum_energy,
            "hubble_rate": hubble_rate,
            "time_step": time_step,
            "momentum": momentum,
            "expansion": expansion,
        }
        self._schedule_hook: Any = None
        lr, beta, _ = self._resolve(self._spec, "CosmoSGD")
        super().__init__(
            params,
            lr=lr,
            momentum=beta,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )

    @staticmethod
    def _resolve(spec: Mapping[str, Any], where: str) -> tuple[float, float, PowerLaw | None]:
        history = resolve_expansion(spec.get("expansion", "de_sitter"))
        if history is not None:
            return _power_law_lr(spec, history, where), history.momentum(0), history
        cosmology = from_units(spec, where)
        return cosmology.lr, cosmology.momentum, None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, converting any physics units it carries into `lr` and `momentum`."""
        group = dict(param_group)
        where = f"CosmoSGD param group {len(getattr(self, 'param_groups', []))}"
        own = {k: group.pop(k) for k in _SPEC_KEYS if k in group}
        if "lr" in group:
            if set(own) - {"momentum"}:
                raise ValueError(
                    f"{where}: got lr together with {sorted(set(own) - {'momentum'})}; give "
                    "either plain lr/momentum or physics units, not both."
                )
            group["momentum"] = own.get("momentum", self.defaults["momentum"])
            _check_plain_group(group, where)
            history = None
        else:
            own.setdefault("expansion", self._spec["expansion"])
            units = len(own) - 1
            if resolve_expansion(own["expansion"]) is not None and "time_step" not in own:
                own["time_step"] = self._spec["time_step"] or math.sqrt(self.defaults["lr"])
            elif units < 2 and "cosmology" not in own:  # incomplete: inherit the rest
                own = {**self._spec, **own}
            group["lr"], group["momentum"], history = self._resolve(own, where)
        group["expansion"] = (
            None if history is None else {"power": history.power, "n0": history.offset}
        )
        group["expansion_step"] = 0
        super().add_param_group(group)
        if history is not None:
            self._ensure_schedule()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as `torch.optim.SGD` does; power-law groups resume their step counters."""
        super().load_state_dict(state_dict)
        if any(g.get("expansion") for g in self.param_groups):
            self._ensure_schedule()

    def _ensure_schedule(self) -> None:
        if self._schedule_hook is None:
            self._schedule_hook = self.register_step_pre_hook(_advance_expansion)

    @classmethod
    def from_suggestion(cls, params: Iterable[Any], suggestion: Any, **sgd_kwargs: Any) -> CosmoSGD:
        """A `CosmoSGD` at the universe `suggest_hyperparameters` chose (its `.cosmology`).

        `sgd_kwargs` (weight_decay, foreach, ...) are passed on as for the constructor.
        """
        cosmology = getattr(suggestion, "cosmology", None)
        if not isinstance(cosmology, Cosmology):
            raise ValueError(
                f"Invalid suggestion: {type(suggestion).__name__} has no Cosmology in "
                "`.cosmology`; pass the result of cosmo_optim.suggest_hyperparameters."
            )
        return cls(params, cosmology=cosmology, **sgd_kwargs)

    def cosmology(self, group: int = 0) -> Cosmology:
        """The universe of `group` now, derived from its current `lr` and `momentum` (T3)."""
        return cosmology_of(self, group)


def _check_plain_group(group: dict[str, Any], where: str) -> None:
    """A group given plain lr/momentum: lr a real number ≥ 0, momentum real in [0, 1) (T3)."""
    lr, beta = group["lr"], group["momentum"]
    real = not isinstance(lr, bool) and isinstance(lr, (numbers.Real, torch.Tensor))
    if not (real and float(lr) >= 0):
        raise ValueError(
            f"{where}: invalid lr: {lr!r}; it must be a real number ≥ 0. Fix: e.g. lr=0.01."
        )
    real = not isinstance(beta, bool) and isinstance(beta, numbers.Real)
    if not (real and 0 <= float(beta) < 1):
        raise ValueError(
            f"{where}: invalid momentum: {beta!r}; it must be a real number with "
            "0 ≤ momentum < 1 (momentum 1 has no Hubble friction). Fix: e.g. momentum=0.9."
        )


def _advance_expansion(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Step pre-hook: set β_n = 1 − 3p/(n + n0) on every power-law group (T11)."""
    for group in optimizer.param_groups:
        history = group.get("expansion")
        if history:
            n = group["expansion_step"]
            group["momentum"] = power_law_momentum(history["power"], history["n0"], n)
            group["expansion_step"] = n + 1


def as_cosmology(cosmology: Any) -> Cosmology:
    """`cosmology` itself, or the universe of a heavy-ball momentum-SGD optimiser's first group
    (:func:`cosmology_of`, T3); a ValueError for anything else."""
    if isinstance(cosmology, Cosmology):
        return cosmology
    if isinstance(cosmology, Optimizer):
        return cosmology_of(cosmology)
    raise ValueError(
        f"Invalid cosmology: {cosmology!r}; pass a cosmo_optim.Cosmology or a momentum-SGD "
        "optimiser (torch.optim.SGD / CosmoSGD)."
    )
