"""Does the network follow its dual at a reading, and if not, why (docs/theory.md T4–T12)?

`verdict_of` reads a reading's logged scalars (any prefix) and builds the `Verdict` of
`cosmo_optim.dual.causes`, the same causes `check_duality` names: the dual holds when the
relative residual of the linearised outputs (T12) is at most `RESIDUAL_TOLERANCE`; a failure
names its causes, largest first (the kernel's move, the edge of stability); the background
(Ω_φ) and the forecast's premise (training on the probe batch) are notes. The verdict card,
the console and the end-of-run summary all use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from cosmo_optim.dual.causes import (
    KERNEL_TOLERANCE,
    RESIDUAL_TOLERANCE,
    Verdict,
    beyond_edge,
    kernel_moved,
    not_measured,
    not_vacuum_dominated,
    ranked,
    training_not_on_probe,
)

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


def verdict_of(scalars: Mapping[str, float], *, interval: int | None = None,
               lr: float | None = None, max_lr: float | None = None) -> Verdict:
    """The verdict of one reading from its scalars (any prefix).

    `interval` (steps between readings) lets the kernel's cause suggest a shorter one; `lr` and
    `max_lr` (the optimiser's lr and the largest vacuum-dominated one, T6) let the edge of
    stability and the background name a safe lr.
    """
    s = named(scalars)
    notes = _notes(s, max_lr)
    rel = s.get("duality/relative_residual")
    if rel is None or not math.isfinite(rel):
        why = ("the outputs did not move between the two readings" if rel is not None else
               "the residual compares two consecutive readings; this is the first one, or "
               "the one before it was skipped or came before a resume")
        return Verdict(None, (not_measured(why),), notes)
    if rel <= RESIDUAL_TOLERANCE:
        forecast = s.get("duality/forecast_residual")
        if forecast is not None and forecast > RESIDUAL_TOLERANCE:
            notes = (*notes, training_not_on_probe(forecast, rel))
        return Verdict(True, (), notes)
    found = []
    change = s.get("ntk/kernel_change")
    if change is not None:
        shorter = "" if interval is None or change <= 0 else (
            f"; read more often (every ≤ {max(1, int(interval * KERNEL_TOLERANCE / change))} "
            "steps) to test the dual where the kernel moves less")
        found.append(kernel_moved(change, "since the previous reading", fix=shorter))
    margin = s.get("cosmology/stability_margin")
    if margin is not None:
        found.append(beyond_edge(margin, lr))
    return Verdict(False, ranked(found, keep_largest=True), notes)


def _notes(s: Mapping[str, float], max_lr: float | None) -> tuple:
    omega = s.get("cosmology/omega_phi")
    return ranked([None if omega is None else not_vacuum_dominated(omega, max_lr)])
