"""What a run's readings say, at its end: `summarize` → `RunSummary` (data) and its `table`.

Where the dual held and by how much (the relative residual of T12 against
`RESIDUAL_TOLERANCE`), the largest causes where it did not (the readings' `verdict_of`,
counted by cause), the background said once for the run rather than at every reading (Ω_φ
against `VACUUM_TOLERANCE`, T6), and the spectrum's story: λ_1 and the hierarchy λ_2/λ_1 from
the first reading to the last, how far the kernel moved per interval and in all (T4, T7).
`CosmologyTracker.summary()` and both callbacks' ``summary()`` return it; the adaptors and
`CosmologyTracker.close` log its table at the end of training.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cosmo_optim.dual.causes import RESIDUAL_TOLERANCE, VACUUM_TOLERANCE
from cosmo_optim.monitor.records import Reading
from cosmo_optim.monitor.verdict import named, verdict_of

__all__ = ["CauseCount", "RunSummary", "summarize"]


@dataclass(frozen=True)
class CauseCount:
    """A cause of the dual's failures over the run: its `name`, the `readings` it was named at
    (as the largest cause), its largest `size` against its `limit`, and that reading's `text`."""

    name: str
    readings: int
    size: float
    limit: float
    text: str


@dataclass(frozen=True)
class RunSummary:
    """The run's readings in a few numbers (see the module docstring). Ranges are (first, last)
    or (smallest, largest) as named; None where the run did not measure the quantity."""

    readings: int
    steps: tuple[int, int] | None
    tested: int  # readings with a relative residual (the duality test, T12)
    held: int  # of those, where it is ≤ RESIDUAL_TOLERANCE
    not_measurable: int  # of those, within reach of the dtype's rounding
    residual: tuple[float, float] | None  # median and largest relative residual
    causes: tuple[CauseCount, ...]  # where it did not hold, most frequent first
    omega_phi: tuple[float, float] | None  # smallest and largest Ω_φ (T6)
    omega_readings: int  # readings that measured Ω_φ
    vacuum_dominated: int  # of those, with Ω_φ ≤ VACUUM_TOLERANCE
    lambda_1: tuple[float, float] | None  # first and last λ_1
    hierarchy: tuple[float, float] | None  # first and last λ_2/λ_1
    kernel_change: tuple[float, float] | None  # median and largest change per interval
    kernel_distance: float | None  # at the last reading, from the first
    nonfinite: int = 0
    failed: int = 0
    precision: str = "torch.float32"

    def as_dict(self) -> dict[str, Any]:
        """Plain values (the causes as dicts), e.g. for ``json.dumps``."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The summary as a short text table, one row per subject (what the end of a run logs)."""
        if not self.readings or self.steps is None:
            return "cosmo-optim: no reading was kept in this run."
        rows = [("dual", self._dual())]
        if self.causes:
            rows.append(("where it failed", "; ".join(
                f"{c.name} at {c.readings} reading{'s' * (c.readings != 1)} (up to "
                f"{c.size:.3g}, limit {c.limit:g})" for c in self.causes[:3])))
        if self.omega_phi is not None:
            rows.append(("background", self._background()))
        rows.append(("spectrum", self._spectrum()))
        if self.nonfinite or self.failed:
            rows.append(("skipped", f"{self.nonfinite} non-finite, {self.failed} failed "
                                    "readings (cosmology/nonfinite, cosmology/failed_readings)"))
        width = max(len(name) for name, _ in rows)
        first, last = self.steps
        head = (f"cosmo-optim: the run's dual, {self.readings} readings after optimiser steps "
                f"{first}–{last} (in {self.precision.removeprefix('torch.')})")
        return "\n".join([head, *(f"  {name:<{width}}  {text}" for name, text in rows)])

    def _dual(self) -> str:
        if not self.tested:
            return ("not tested: the residual needs two consecutive readings (T12)"
                    if self.readings < 2 else f"not tested at any of {self.readings} readings "
                    "(the residual was not measurable: see the run's warnings)")
        text = (f"holds at {self.held} of {self.tested} tested readings (relative residual "
                f"≤ {RESIDUAL_TOLERANCE:g}, T12)")
        if self.residual is not None:
            text += f"; median {self.residual[0]:.3g}, largest {self.residual[1]:.3g}"
        if self.not_measurable:
            text += f"; {self.not_measurable} within rounding (not measurable)"
        return text

    def _background(self) -> str:
        assert self.omega_phi is not None
        lo, hi = self.omega_phi
        total = self.omega_readings
        if self.vacuum_dominated == total:
            return (f"vacuum dominated throughout: Ω_φ {lo:.3g} to {hi:.3g} "
                    f"(≤ {VACUUM_TOLERANCE:g}, T6)")
        return (f"not vacuum dominated at {total - self.vacuum_dominated} of {total} readings: "
                f"Ω_φ {lo:.3g} to {hi:.3g} (> {VACUUM_TOLERANCE:g}); a note on reading the run "
                "as a de Sitter universe, not a failure of the field equation (T6)")

    def _spectrum(self) -> str:
        parts = []
        if self.lambda_1 is not None:
            a, b = self.lambda_1
            change = f" ({(b - a) / a:+.0%})" if a else ""
            parts.append(f"λ_1 {a:.4g} → {b:.4g}{change}")
        if self.hierarchy is not None:
            parts.append(f"λ_2/λ_1 {self.hierarchy[0]:.3g} → {self.hierarchy[1]:.3g}")
        if self.kernel_change is not None:
            median, top = self.kernel_change
            parts.append(f"kernel change per interval median {median:.2%}, largest {top:.2%} "
                         "(a lazy network stays ≤ 5 %)")
        if self.kernel_distance is not None:
            parts.append(f"distance from the first kernel {self.kernel_distance:.2g}")
        return "; ".join(parts) or "not measured"


def summarize(history: Sequence[Reading], *, interval: int | None = None, nonfinite: int = 0,
              failed: int = 0, precision: str = "torch.float32") -> RunSummary:
    """The `RunSummary` of a run's readings (any prefix), each judged by `verdict_of` with the
    reading before it and the reading `interval`."""
    scalars = [named(r.scalars) for r in history]
    tested, held, rounding = 0, 0, 0
    causes: dict[str, CauseCount] = {}
    residuals = []
    for i, s in enumerate(scalars):
        rel = s.get("duality/relative_residual")
        if rel is None or not math.isfinite(rel):
            continue
        tested += 1
        residuals.append(rel)
        verdict = verdict_of(s, previous=scalars[i - 1] if i else None, interval=interval)
        held += verdict.holds is True
        rounding += verdict.holds is None
        if verdict.holds is False and verdict.causes:
            _count(causes, verdict.causes[0])
    omegas = _values(scalars, "cosmology/omega_phi")
    summary = RunSummary(
        readings=len(history), steps=(history[0].step, history[-1].step) if history else None,
        tested=tested, held=held, not_measurable=rounding,
        residual=(statistics.median(residuals), max(residuals)) if residuals else None,
        causes=tuple(sorted(causes.values(), key=lambda c: (-c.readings, -c.size / c.limit))),
        omega_phi=(min(omegas), max(omegas)) if omegas else None, omega_readings=len(omegas),
        vacuum_dominated=sum(o <= VACUUM_TOLERANCE for o in omegas),
        lambda_1=_ends(scalars, "ntk/lambda_1"), hierarchy=_ends(scalars, "ntk/ratio_2"),
        kernel_change=_median_max(_values(scalars, "ntk/kernel_change")),
        kernel_distance=_last(_values(scalars, "ntk/kernel_distance")),
        nonfinite=nonfinite, failed=failed, precision=precision,
    )
    return summary


def _count(causes: dict[str, CauseCount], cause: Any) -> None:
    seen = causes.get(cause.name)
    if seen is None:
        causes[cause.name] = CauseCount(cause.name, 1, cause.size, cause.limit, cause.text)
        return
    larger = cause.size > seen.size
    causes[cause.name] = CauseCount(cause.name, seen.readings + 1,
                                    cause.size if larger else seen.size, seen.limit,
                                    cause.text if larger else seen.text)


def _values(scalars: Sequence[Mapping[str, float]], tag: str) -> list[float]:
    return [s[tag] for s in scalars if tag in s and math.isfinite(s[tag])]


def _ends(scalars: Sequence[Mapping[str, float]], tag: str) -> tuple[float, float] | None:
    values = _values(scalars, tag)
    return (values[0], values[-1]) if values else None


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def _median_max(values: list[float]) -> tuple[float, float] | None:
    return (statistics.median(values), max(values)) if values else None
