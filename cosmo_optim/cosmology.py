"""The optimiser's hyperparameters read as a de Sitter universe (docs/theory.md T1–T3, T9, T11).

Momentum SGD with learning rate η and momentum β is, in the continuum limit with time step
Δt = sqrt(η), a field rolling with Hubble friction 3H = (1 − β)/Δt (T2, T3). The vacuum
energy Λ = 3H² = (1 − β)²/(3η) is what keeps that friction constant. `Cosmology` holds the
pair (η, β) and derives the physical view; `PowerLaw` is the time-dependent friction of a
universe a ∝ t^p (T11).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "EXPANSIONS", "UNITS", "Cosmology", "PowerLaw", "from_units",
    "power_law_momentum", "resolve_expansion",
]

UNITS: Final = ("vacuum_energy", "hubble_rate", "time_step", "momentum")

# Rounding can leave 1 − sqrt(3Λ)·Δt a hair below zero when the user meant β = 0.
_MOMENTUM_ROUNDING: Final = 1e-12


def _real(name: str, value: Any) -> float:
    """`value` as a float if it is a real number (bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Invalid {name}: {value!r}; it must be a real number (not "
            f"{type(value).__name__}). Fix: pass e.g. {name}=0.1."
        )
    return float(value)


def _positive(name: str, value: float, fix: str) -> float:
    value = _real(name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid {name}: {value!r}; it must be a finite number > 0. {fix}")
    return value


def _check_momentum(momentum: float, origin: str) -> float:
    momentum = _real("momentum", momentum)
    if -_MOMENTUM_ROUNDING < momentum < 0:
        momentum = 0.0
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise ValueError(
            f"Invalid momentum: {momentum!r}{origin}; it must satisfy 0 ≤ momentum < 1 "
            "(momentum 1 has no Hubble friction, momentum > 1 diverges). "
            "Choose a smaller vacuum energy or Hubble rate, or a smaller time step."
        )
    return momentum


@dataclass(frozen=True, slots=True)
class Cosmology:
    """The de Sitter universe dual to momentum SGD with learning rate `lr` and `momentum`.

    Stored as the optimiser's own pair (η, β); every physical quantity is derived (T3) in
    reduced Planck units (M_P = 1) with one optimiser step lasting Δt = sqrt(η):

    ==================  =========================  ==========================
    attribute           formula                    unit
    ==================  =========================  ==========================
    time_step           Δt = sqrt(η)               time per step
    hubble_rate         H = (1 − β) / (3 Δt)       1 / time
    vacuum_energy       Λ = 3 H² = (1 − β)²/(3η)   energy density
    hubble_time_steps   1 / (H Δt) = 3 / (1 − β)   steps
    efolds_per_step     H Δt = (1 − β) / 3         e-folds
    ==================  =========================  ==========================

    Example:
        >>> c = Cosmology.from_sgd(lr=1e-3, momentum=0.9)
        >>> round(c.hubble_rate, 3), round(c.vacuum_energy, 2), round(c.hubble_time_steps, 1)
        (1.054, 3.33, 30.0)
        >>> Cosmology.from_vacuum_energy(3.3, time_step=0.03).momentum  # doctest: +ELLIPSIS
        0.905...
    """

    lr: float
    momentum: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _positive("lr", self.lr, "Pass a positive learning rate."))
        object.__setattr__(self, "momentum", _check_momentum(self.momentum, ""))
        derived = (self.hubble_rate, self.vacuum_energy)
        if not all(math.isfinite(x) and x > 0 for x in derived):
            raise ValueError(
                f"Invalid lr: {self.lr!r} with momentum {self.momentum!r}; the Hubble rate "
                f"and vacuum energy ({derived[0]!r}, {derived[1]!r}) fall outside the float "
                "range. Fix: use an lr between about 1e-300 and 1e300."
            )

    @classmethod
    def from_sgd(cls, lr: float, momentum: float) -> Cosmology:
        """The universe of `torch.optim.SGD(lr=lr, momentum=momentum)` (T3)."""
        return cls(lr, momentum)

    @classmethod
    def from_vacuum_energy(
        cls,
        vacuum_energy: float,
        *,
        time_step: float | None = None,
        momentum: float | None = None,
    ) -> Cosmology:
        """Build from Λ and exactly one of Δt or β (inverse maps of T3).

        With Δt: η = Δt², β = 1 − sqrt(3Λ)·Δt, which needs sqrt(3Λ)·Δt ≤ 1.
        With β: η = (1 − β)²/(3Λ).
        """
        lam = _positive("vacuum_energy", vacuum_energy, "Λ = (1 − β)²/(3·lr) is positive.")
        if (time_step is None) == (momentum is None):
            raise ValueError(
                "Cosmology.from_vacuum_energy needs exactly one of time_step or momentum, "
                f"got time_step={time_step!r}, momentum={momentum!r}."
            )
        if time_step is not None:
            dt = _positive("time_step", time_step, "Δt = sqrt(lr) is positive.")
            beta = 1.0 - math.sqrt(3.0 * lam) * dt
            if beta < -_MOMENTUM_ROUNDING:
                raise ValueError(
                    f"Invalid vacuum_energy={lam!r} with time_step={dt!r}: "
                    f"sqrt(3*Λ)*Δt = {math.sqrt(3 * lam) * dt:.6g} must be ≤ 1 so that "
                    f"momentum ≥ 0. Use time_step ≤ {1 / math.sqrt(3 * lam):.6g} or "
                    f"vacuum_energy ≤ {1 / (3 * dt * dt):.6g}."
                )
            return cls(dt * dt, max(beta, 0.0))
        beta = _check_momentum(momentum, "")  # type: ignore[arg-type]
        return cls((1.0 - beta) ** 2 / (3.0 * lam), beta)

    @classmethod
    def from_hubble_rate(
        cls,
        hubble_rate: float,
        *,
        time_step: float | None = None,
        momentum: float | None = None,
    ) -> Cosmology:
        """Build from H and exactly one of Δt or β (T3): β = 1 − 3HΔt, or Δt = (1 − β)/(3H)."""
        h = _positive("hubble_rate", hubble_rate, "H = (1 − β)/(3·sqrt(lr)) is positive.")
        if (time_step is None) == (momentum is None):
            raise ValueError(
                "Cosmology.from_hubble_rate needs exactly one of time_step or momentum, "
                f"got time_step={time_step!r}, momentum={momentum!r}."
            )
        if time_step is not None:
            dt = _positive("time_step", time_step, "Δt = sqrt(lr) is positive.")
            beta = 1.0 - 3.0 * h * dt
            if beta < -_MOMENTUM_ROUNDING:
                raise ValueError(
                    f"Invalid hubble_rate={h!r} with time_step={dt!r}: 3*H*Δt = "
                    f"{3 * h * dt:.6g} must be ≤ 1 so that momentum ≥ 0. Use time_step ≤ "
                    f"{1 / (3 * h):.6g} or hubble_rate ≤ {1 / (3 * dt):.6g}."
                )
            return cls(dt * dt, max(beta, 0.0))
        beta = _check_momentum(momentum, "")  # type: ignore[arg-type]
        dt = (1.0 - beta) / (3.0 * h)
        return cls(dt * dt, beta)

    @property
    def time_step(self) -> float:
        """Δt = sqrt(η): the continuum time one optimiser step lasts (T2)."""
        return math.sqrt(self.lr)

    @property
    def hubble_rate(self) -> float:
        """H = (1 − β)/(3 sqrt(η)), in inverse time units (T3)."""
        return (1.0 - self.momentum) / (3.0 * math.sqrt(self.lr))

    @property
    def friction(self) -> float:
        """3H = (1 − β)/sqrt(η): the damping coefficient of the continuum equation (T2)."""
        return 3.0 * self.hubble_rate

    @property
    def vacuum_energy(self) -> float:
        """Λ = 3H² = (1 − β)²/(3η), an energy density in reduced Planck units (T3)."""
        return (1.0 - self.momentum) ** 2 / (3.0 * self.lr)

    @property
    def hubble_time_steps(self) -> float:
        """The Hubble time 1/H measured in optimiser steps: 3/(1 − β) (T3)."""
        return 3.0 / (1.0 - self.momentum)

    @property
    def hubble_time(self) -> float:
        """The Hubble time 1/H in continuum time units, equally the Hubble length (T9)."""
        return 1.0 / self.hubble_rate

    @property
    def efolds_per_step(self) -> float:
        """Expansion per optimiser step, H·Δt = (1 − β)/3 e-folds (T3, T9)."""
        return (1.0 - self.momentum) / 3.0

    def efolds(self, steps: float) -> float:
        """e-folds after `steps` optimiser steps, N_e = n (1 − β)/3 (T9)."""
        return steps * self.efolds_per_step

    def __repr__(self) -> str:
        return (
            f"Cosmology(lr={self.lr:.6g}, momentum={self.momentum:.6g} | "
            f"time_step={self.time_step:.6g}, hubble_rate={self.hubble_rate:.6g}, "
            f"vacuum_energy={self.vacuum_energy:.6g}, "
            f"hubble_time_steps={self.hubble_time_steps:.6g})"
        )


def from_units(spec: Mapping[str, Any], where: str = "Cosmology") -> Cosmology:
    """The `Cosmology` named by exactly two of `UNITS`, or by a `cosmology` entry (T3).

    `spec` maps unit names to values (None means not given); `where` prefixes error messages.

    Example:
        >>> round(from_units({"hubble_rate": 1.0, "momentum": 0.7}).time_step, 12)
        0.1
    """
    given = {k: spec[k] for k in UNITS if spec.get(k) is not None}
    if spec.get("cosmology") is not None:
        if given:
            raise ValueError(
                f"{where}: got cosmology together with {sorted(given)}; "
                "give either a Cosmology or exactly two physics units, not both."
            )
        cosmology = spec["cosmology"]
        if not isinstance(cosmology, Cosmology):
            raise ValueError(
                f"{where}: invalid cosmology {cosmology!r}; it must be a cosmo_optim.Cosmology."
            )
        return cosmology
    if len(given) != 2:
        raise ValueError(
            f"{where}: got {sorted(given) or 'no physics units'}; give exactly two of "
            f"{list(UNITS)} (e.g. vacuum_energy=3.3, time_step=0.03) or cosmology=Cosmology(...)."
        )
    lam, h = given.get("vacuum_energy"), given.get("hubble_rate")
    dt, beta = given.get("time_step"), given.get("momentum")
    if lam is not None and h is not None:
        raise ValueError(
            f"{where}: vacuum_energy and hubble_rate are not independent (Λ = 3H²); "
            "pair one of them with time_step or momentum."
        )
    if lam is not None:
        return Cosmology.from_vacuum_energy(lam, time_step=dt, momentum=beta)
    if h is not None:
        return Cosmology.from_hubble_rate(h, time_step=dt, momentum=beta)
    return Cosmology(lr_of(dt, where), beta)  # type: ignore[arg-type]


def lr_of(time_step: float, where: str) -> float:
    """η = Δt² (T2)."""
    ok = isinstance(time_step, numbers.Real) and not isinstance(time_step, bool)
    lr = float(time_step) * float(time_step) if ok else math.nan
    if not (ok and time_step > 0 and math.isfinite(lr) and lr > 0):
        raise ValueError(
            f"{where}: invalid time_step: {time_step!r}; it must be a real number > 0 whose "
            "square lr = time_step² is a finite float > 0 (time_step = sqrt(lr))."
        )
    return lr


@dataclass(frozen=True, slots=True)
class PowerLaw:
    """A power-law universe a ∝ t^p, whose Hubble friction falls as 3p/t (T11).

    With t_n = (n + n0)·Δt the per-step momentum is β_n = 1 − 3p/(n + n0). `n0` must exceed
    3p, so every β_n is strictly positive (torch keeps no momentum buffer on a step with
    β = 0, which would drop the velocity carried into the next step); it defaults to
    floor(3p) + 1. Known cases: radiation (p = 1/2), matter (p = 2/3) and p = 1, whose
    momentum (n + 1)/(n + 4) is the (k − 1)/(k + 2) sequence (k = n + 2) of Nesterov's
    accelerated gradient (Su, Boyd & Candès 2016; applied here in heavy-ball form, which
    shares its continuum ODE ẍ + (3/t) ẋ + ∇L = 0).

    Example:
        >>> PowerLaw(1.0).momentum(0), PowerLaw(1.0).momentum(2)
        (0.25, 0.5)
    """

    power: float
    n0: int | None = None

    def __post_init__(self) -> None:
        p = float(self.power)
        if not (math.isfinite(p) and p > 0):
            raise ValueError(
                f"Invalid power-law exponent p={self.power!r}; it must be > 0 "
                "(radiation 1/2, matter 2/3, Nesterov 1)."
            )
        object.__setattr__(self, "power", p)
        least = math.floor(3 * p) + 1
        if self.n0 is None:
            object.__setattr__(self, "n0", least)
        elif int(self.n0) != self.n0 or self.n0 <= 3 * p:
            raise ValueError(
                f"Invalid n0={self.n0!r} for p={p!r}; it must be an integer > 3p = {3 * p:.6g} "
                f"(e.g. n0={least}) so that every momentum 1 − 3p/(n + n0) is > 0."
            )

    @property
    def offset(self) -> int:
        """The step offset n0 (an int after construction)."""
        return int(self.n0)  # type: ignore[arg-type]

    def momentum(self, step: int) -> float:
        """β_n = 1 − 3p/(n + n0) at optimiser step `step` (0-based) (T11)."""
        return power_law_momentum(self.power, self.offset, step)


def power_law_momentum(power: float, n0: int, step: int) -> float:
    """β_n = 1 − 3p/(n + n0): the momentum of step n in a universe a ∝ t^p with t_n = (n + n0)Δt
    (T11). The one definition, used by `PowerLaw` and by `CosmoSGD`'s schedule."""
    return 1.0 - 3.0 * power / (step + n0)


EXPANSIONS: Final[dict[str, PowerLaw | None]] = {
    "de_sitter": None,
    "radiation": PowerLaw(0.5),
    "matter": PowerLaw(2.0 / 3.0),
    "nesterov": PowerLaw(1.0),
}


def resolve_expansion(expansion: str | PowerLaw | None) -> PowerLaw | None:
    """Map an expansion name or `PowerLaw` to the history; None means de Sitter (T11)."""
    if expansion is None or isinstance(expansion, PowerLaw):
        return expansion
    if isinstance(expansion, str) and expansion in EXPANSIONS:
        return EXPANSIONS[expansion]
    raise ValueError(
        f'Invalid expansion "{expansion}". Must be one of {sorted(EXPANSIONS)} '
        "or a PowerLaw(p, n0=...)."
    )
