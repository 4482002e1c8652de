"""Why the dual holds or does not, in words a user can act on (docs/theory.md T4, T6, T10, T12).

A `Verdict` says whether the network follows its dual and lists the `Cause`s behind it, each a
measured value against the value at which it starts to matter, ranked by that ratio (its
`severity`): the largest first. `check_duality`'s report, the monitor's verdict card and its
end-of-run summary build their verdicts from the same causes, so a cause reads the same
wherever a user meets it. Causes that explain a failure are `causes`; those that qualify the
reading without deciding it (the background's Ω_φ, the forecast's premise) are `notes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from cosmo_optim.dual.modes import MEAN_FIELD_OVERLAP

__all__ = [
    "EDGE_OF_STABILITY", "EXPLAINS", "KERNEL_TOLERANCE", "RESIDUAL_TOLERANCE",
    "VACUUM_TOLERANCE", "Cause", "Verdict", "at_rounding", "beyond_edge", "continuum_error",
    "diverged", "kernel_moved", "no_mean_field_mode", "not_measured", "not_vacuum_dominated",
    "ranked", "training_not_on_probe", "unexplained",
]

#: The dual holds while the relative residual (T12) or deviation stays at or below this.
RESIDUAL_TOLERANCE: Final = 0.05
#: The lazy limit (T4) is left when the kernel changes by more than this, relatively.
KERNEL_TOLERANCE: Final = 0.05
#: The background is vacuum dominated while Ω_φ stays at or below this (T6).
VACUUM_TOLERANCE: Final = 0.1
#: The heavy-ball map diverges on a mode at a stability margin η κ / 2(1 + β) of 1 (T10).
EDGE_OF_STABILITY: Final = 1.0


@dataclass(frozen=True)
class Cause:
    """One measured reason: `name` (a short key), the measured `size`, the `limit` at which it
    starts to matter (both in the cause's own units) and `text`, one sentence with the value,
    what it means and the fix."""

    name: str
    size: float
    limit: float
    text: str

    @property
    def severity(self) -> float:
        """size / limit: ≥ 1 where the cause matters; NaN sizes rank last."""
        ratio = self.size / self.limit
        return ratio if math.isfinite(ratio) else -math.inf


@dataclass(frozen=True)
class Verdict:
    """Does the network follow its dual? `holds` (None: not measured), the `causes` of a
    failure (largest first) and the `notes` that qualify the reading without deciding it."""

    holds: bool | None
    causes: tuple[Cause, ...] = ()
    notes: tuple[Cause, ...] = ()

    @property
    def headline(self) -> str:
        """"holds", "does not hold" or "is not measured"."""
        return {True: "holds", False: "does not hold", None: "is not measured"}[self.holds]

    def lines(self) -> list[str]:
        """The headline's reasons, then the notes, one sentence each."""
        return [c.text for c in self.causes] + [f"note: {c.text}" for c in self.notes]


#: Below this share of its limit a cause does not explain a failure: `ranked` says so instead.
EXPLAINS: Final = 0.2


def ranked(causes: Iterable[Cause | None], *, keep_largest: bool = False) -> tuple[Cause, ...]:
    """The causes that matter (severity ≥ 1), largest first. With `keep_largest` (a failure
    always names a cause) and none mattering: the largest if it reaches `EXPLAINS` of its
    limit, else `unexplained`, naming what was measured."""
    present = sorted((c for c in causes if c is not None), key=lambda c: -c.severity)
    mattering = tuple(c for c in present if c.severity >= 1)
    if mattering or not keep_largest:
        return mattering
    if present and present[0].severity >= EXPLAINS:
        largest = present[0]
        return (Cause(largest.name, largest.size, largest.limit,
                      f"{largest.text} (below its limit, but the largest cause measured)"),)
    return (unexplained(present),)


def unexplained(measured: Iterable[Cause]) -> Cause:
    """A failure none of the measured causes reaches `EXPLAINS` of its limit for."""
    values = "; ".join(f"{c.name} {c.size:.3g} (limit {c.limit:g})" for c in measured)
    return Cause("unexplained", math.nan, 1.0, (
        "not explained by what is measured" + (f" ({values})" if values else "") + ": the "
        "outputs are not linear in the weights over this stretch though the kernel barely "
        "moved, or they moved so little that rounding and second-order terms dominate"))


def kernel_moved(change: float, span: str, limit: float = KERNEL_TOLERANCE,
                 fix: str = "") -> Cause:
    """The kernel changed by `change` = ‖Θ − Θ_ref‖/‖Θ_ref‖ over `span` (T4, T12)."""
    return Cause("kernel moved", change, limit, (
        f"the kernel moved {change:.1%} {span} (relative change; > {limit:.0%} leaves the lazy "
        "limit): the network learns features, and the frozen-kernel dual describes it only "
        f"over shorter stretches (T4){fix}"))


def at_rounding(residual: float, floor: float, dtype: str) -> Cause:
    """The residual is within reach of the model's own rounding: not a measurement (T12)."""
    return Cause("rounding", residual, floor, (
        f"not measurable: the outputs moved so little against their size that {dtype} "
        f"rounding alone gives a relative residual of ≈ {floor:.2g} (measured {residual:.2g}); "
        "read less often, or evaluate the model in a wider dtype"))


def no_mean_field_mode(overlap: float) -> Cause:
    """No kernel mode is aligned with the uniform direction (T7)."""
    return Cause("no mean-field mode", overlap, MEAN_FIELD_OVERLAP, (
        f"no kernel mode carries the mean field (best uniform overlap {overlap:.2f} ≤ "
        f"{MEAN_FIELD_OVERLAP:.2f}): α_eff is the mean kernel entry, the exact coupling of a "
        "uniform state, and the homogeneous picture is rough (T7)"))


def beyond_edge(margin: float, when: str = "") -> Cause:
    """The stiffest mode's stability margin η κ_max / 2(1 + β) (T10), `when` measured."""
    if margin >= EDGE_OF_STABILITY:
        text = (f"steps beyond the edge of stability{when}: η κ_max / 2(1 + β) = {margin:.3g}, "
                "the heavy-ball map diverges on the stiffest mode (T10); an lr "
                f"{margin:.3g}× lower keeps every mode inside the edge")
    else:
        text = (f"the stiffest mode at {margin:.3g} of the edge of stability{when} "
                "(η κ_max / 2(1 + β); the map diverges at 1, T10)")
    return Cause("edge of stability", margin, EDGE_OF_STABILITY, text)


def not_vacuum_dominated(omega: float, max_lr: float | None = None,
                         limit: float = VACUUM_TOLERANCE) -> Cause:
    """Ω_φ above `limit`: the background is not de Sitter (T6); never a failure of the
    field equation."""
    fix = "" if max_lr is None or not math.isfinite(max_lr) else (
        f"; lr ≤ {max_lr:.3g} keeps Ω_φ ≤ {limit:g} at rest")
    return Cause("not vacuum dominated", omega, limit, (
        f"not vacuum dominated: Ω_φ = {omega:.3g} > {limit:g}; the field equation does not need "
        f"it, the reading as a self-gravitating de Sitter universe does (T6){fix}"))


def training_not_on_probe(forecast: float, residual: float) -> Cause:
    """The forecast (as if training were full-batch on the probe batch) misses while the
    outputs follow the force training applied: mini-batches or other data (T10, T12)."""
    return Cause("training is not on the probe batch", forecast, RESIDUAL_TOLERANCE, (
        f"mini-batch noise / other data: the forecast made as if training were full-batch on "
        f"the probe batch misses by {forecast:.1%} of the motion, while the outputs follow the "
        f"force training applied to {residual:.1%} (T10, T12); the forecast's premise, not the "
        "duality, fails"))


def continuum_error(ode: float, discrete: float, step_size: float) -> Cause:
    """The ODE misses where the exact discrete map holds: the continuum limit (T2, T10)."""
    return Cause("discrete against continuum", ode, RESIDUAL_TOLERANCE, (
        f"discrete against continuum: the exact heavy-ball map (T10) misses by {discrete:.1%}, "
        f"the continuum ODE by {ode:.1%}; steps of η κ_max = {step_size:.3g} are too large for "
        "the continuum limit (T2). Lower the lr, or read the map's prediction"))


def diverged(step: int, margin: float) -> Cause:
    """Training produced NaN or inf outputs at `step`."""
    return Cause("diverged", math.inf, 1.0, (
        f"training diverged: NaN or inf outputs at step {step} (stability margin "
        f"{margin:.3g}; ≥ 1 is unstable by T10)"))


def not_measured(why: str) -> Cause:
    """No residual yet: the reason, e.g. too few readings."""
    return Cause("not measured", math.nan, 1.0, f"not measured: {why}")
