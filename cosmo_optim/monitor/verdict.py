"""Does the network follow its dual at a reading, and if not, why (docs/theory.md T4–T12)?

`verdict_of` reads a reading's logged scalars (any prefix) and builds the `Verdict` of
`cosmo_optim.dual.causes`, the same causes `check_duality` names: the dual holds when the
relative residual of the linearised outputs (T12) is at most `RESIDUAL_TOLERANCE`; a failure
names its causes (steps beyond the edge of stability over the interval first, then the
kernel's move); a residual within reach of rounding is not a measurement; the background
(Ω_φ), a missing mean-field mode, the edge ahead and the forecast's premise (training on the
probe batch) are notes. The verdict card uses it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from cosmo_optim.dual.causes import (
    KERNEL_TOLERANCE,
    RESIDUAL_TOLERANCE,
    Cause,
    Verdict,
    at_rounding,
    beyond_edge,
    kernel_moved,
    no_mean_field_mode,
    not_measured,
    not_vacuum_dominated,
    ranked,
    training_not_on_probe,
)
from cosmo_optim.dual.modes import MEAN_FIELD_OVERLAP

__all__ = ["base_tag", "named", "verdict_of"]

_TAIL = re.compile(r"((?:cosmology|ntk|modes|duality)/[a-z_0-9]+)$")


def base_tag(tag: str) -> str | None:
    """A monitor tag without its prefix (``train/ntk/lambda_1`` → ``ntk/lambda_1``), or None
    for a tag that is not the monitor's."""
    match = _TAIL.search(tag)
    return None if match is None else match.group(1)


def named(scalars: Mapping[str, float]) -> dict[str, float]:
    """A reading's scalars keyed by their tags without prefix."""
    return {base: value for tag, value in scalars.items() if (base := base_tag(tag))}


def verdict_of(scalars: Mapping[str, float], *, previous: Mapping[str, float] | None = None,
               interval: int | None = None, max_lr: float | None = None) -> Verdict:
    """The verdict of one reading from its scalars (any prefix).

    `previous` is the reading before (its stability margin is the one the steps in between
    took), `interval` the steps between readings (the kernel's cause then suggests a shorter
    one), `max_lr` the largest vacuum-dominated lr (T6, for the background's note).
    """
    s = named(scalars)
    margin_then = named(previous or {}).get("cosmology/stability_margin")
    margin_now = s.get("cosmology/stability_margin")
    notes = _notes(s, max_lr)
    rel = s.get("duality/relative_residual")
    floor = s.get("duality/rounding_floor", 0.0)
    edge_ahead = None if margin_now is None or margin_now < 1 else beyond_edge(
        margin_now, " from this reading on")
    if rel is None or not math.isfinite(rel):
        why = ("the outputs did not move between the two readings" if rel is not None else
               "the residual compares two consecutive readings; this is the first one, the "
               "one before it was skipped or came before a resume, or the model's parameters "
               "changed in between (a warning says how)")
        return Verdict(None, (not_measured(why),), _with(edge_ahead, notes))
    if rel <= RESIDUAL_TOLERANCE:
        forecast = s.get("duality/forecast_residual")
        if forecast is not None and forecast > RESIDUAL_TOLERANCE:
            notes = (*notes, training_not_on_probe(forecast, rel))
        edge = edge_ahead or (None if margin_then is None or margin_then < 1 else beyond_edge(
            margin_then, " over this interval, which training weathered"))
        return Verdict(True, (), _with(edge, notes))
    if rel <= 3 * floor:
        return Verdict(None, (at_rounding(rel, floor, "the model's"),), notes)
    return Verdict(False, _causes(s, margin_then, interval), _with(edge_ahead, notes))


def _causes(s: Mapping[str, float], margin_then: float | None,
            interval: int | None) -> tuple[Cause, ...]:
    """Why a reading does not follow its dual, largest first; steps beyond the edge of
    stability over the interval come first, as the cause of the kernel's move they bring."""
    edge = None if margin_then is None else beyond_edge(margin_then, " over this interval")
    beyond = edge is not None and edge.severity >= 1
    change = s.get("ntk/kernel_change")
    fix = "; the steps beyond the edge above move it" if beyond else _shorter(change, interval)
    kernel = None if change is None else kernel_moved(change, "since the previous reading",
                                                      fix=fix)
    if edge is not None and beyond:
        return (edge, *ranked([kernel]))
    return ranked([edge, kernel], keep_largest=True)


def _shorter(change: float | None, interval: int | None) -> str:
    """The kernel cause's fix: the interval over which the kernel would move ≤ the tolerance
    (if it moves linearly), or a lower lr where even one step moves it more."""
    if interval is None or change is None or not change > 0:
        return ""
    steps = int(interval * KERNEL_TOLERANCE / change)
    if steps < 1:
        return (f"; it moves ≈ {change / interval:.1%} per step, so only a lower lr brings it "
                "back to the lazy limit")
    return (f"; read more often (every ≤ {steps} steps) to test the dual where the kernel moves "
            "less, or lower the lr")


def _notes(s: Mapping[str, float], max_lr: float | None) -> tuple[Cause, ...]:
    omega, overlap = s.get("cosmology/omega_phi"), s.get("ntk/mean_field_overlap")
    found = ranked([None if omega is None else not_vacuum_dominated(omega, max_lr)])
    if overlap is not None and overlap <= MEAN_FIELD_OVERLAP:
        found = (*found, no_mean_field_mode(overlap))
    return found


def _with(cause: Cause | None, notes: tuple[Cause, ...]) -> tuple[Cause, ...]:
    return notes if cause is None else (cause, *notes)
