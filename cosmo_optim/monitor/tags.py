"""The names the monitor logs: one list, read by the tracker, the adaptors and the docs test.

Scalars are documented in ``docs/callbacks.md`` (a test checks that page against `SCALAR_TAGS`);
``{k}`` runs over the followed modes 1..top_k (``ntk/ratio_{k}`` from 2).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COMPARED",
    "FIGURE_TAGS",
    "HISTOGRAM_TAGS",
    "NEEDS_DUAL",
    "NEEDS_LOSS",
    "SCALAR_TAGS",
    "TEXT_TAGS",
    "scalar_tags",
]

#: Scalar tags logged at every reading; ``{k}`` runs over modes 1..top_k (``ratio`` from 2).
#: Those that compare with the previous reading (`COMPARED`) start at the second;
#: ``cosmology/failed_readings`` appears with the first reading that raised.
SCALAR_TAGS: Final = (
    "cosmology/hubble_rate",
    "cosmology/vacuum_energy",
    "cosmology/efolds",
    "cosmology/alpha_eff",
    "cosmology/field",
    "cosmology/potential",
    "cosmology/omega_phi",
    "cosmology/slow_roll_epsilon",
    "cosmology/slow_roll_eta",
    "cosmology/stability_margin",
    "cosmology/nonfinite",
    "cosmology/failed_readings",
    "ntk/lambda_1",
    "ntk/ratio_{k}",
    "ntk/kernel_distance",
    "ntk/kernel_change",
    "ntk/basis_rotation",
    "ntk/mean_field_overlap",
    "ntk/sketch_dim",
    "modes/amplitude_{k}",
    "modes/initial_amplitude_{k}",
    "modes/mass_over_hubble_{k}",
    "modes/active",
    "duality/residual",
    "duality/relative_residual",
    "duality/rounding_floor",
    "duality/forecast_residual",
)
#: Tags that compare a reading with the one before: absent at the first reading, after a
#: skipped one, and (the residuals) at the first reading after a resume (T10, T12).
COMPARED: Final = frozenset({
    "ntk/kernel_change", "duality/residual", "duality/relative_residual",
    "duality/rounding_floor", "duality/forecast_residual",
})
#: Histograms written to a ``SummaryWriter`` at every probe (the masses need a dual).
HISTOGRAM_TAGS: Final = ("ntk/spectrum", "modes/mass_over_hubble")
#: Figures drawn when ``log_figures_every_n_steps`` is set (the potential needs a dual).
FIGURE_TAGS: Final = ("figures/potential", "figures/spectrum", "figures/modes")
#: Markdown cards written to a ``SummaryWriter``: whether the dual holds, at every reading;
#: what failed since the last reading, when something did (`cosmo_optim.monitor.guard`).
TEXT_TAGS: Final = ("cosmology/verdicts", "cosmology/failures")

#: Tags that need a heavy-ball momentum-SGD optimiser (a de Sitter dual, T3).
NEEDS_DUAL: Final = frozenset({
    "cosmology/hubble_rate", "cosmology/vacuum_energy", "cosmology/efolds",
    "cosmology/omega_phi", "cosmology/slow_roll_epsilon", "cosmology/slow_roll_eta",
    "cosmology/stability_margin", "cosmology/potential", "modes/mass_over_hubble_{k}",
    "modes/active", "duality/forecast_residual",
})
#: Tags that also need a loss ℓ (T5–T10).
NEEDS_LOSS: Final = NEEDS_DUAL - {
    "cosmology/hubble_rate", "cosmology/vacuum_energy", "cosmology/efolds"
}


def scalar_tags(
    top_k: int, *, dual: bool = True, loss: bool = True, outputs: int = 1, prefix: str = "",
    failed: bool = False,
) -> list[str]:
    """The scalar tags a tracker logs for `top_k` modes (see `SCALAR_TAGS`).

    `dual` is False for optimisers without momentum-SGD form (Adam: no H, Λ, masses, forecast),
    `loss` False when no loss was given, `outputs` the model's outputs per input (the scalar
    `cosmology/field` φ̄ exists for one output only), `failed` True once a reading of the run
    has raised (``cosmology/failed_readings`` is logged from then on).

    >>> scalar_tags(2, dual=False)[:4]
    ['cosmology/alpha_eff', 'cosmology/field', 'cosmology/nonfinite', 'ntk/lambda_1']
    """
    tags = []
    for tag in SCALAR_TAGS:
        if (not dual and tag in NEEDS_DUAL) or (not loss and tag in NEEDS_LOSS):
            continue
        if (tag == "cosmology/field" and outputs != 1) or (
                tag == "cosmology/failed_readings" and not failed):
            continue
        if "{k}" in tag:
            first = 2 if tag.startswith("ntk/ratio") else 1
            tags += [prefix + tag.format(k=k) for k in range(first, top_k + 1)]
        else:
            tags.append(prefix + tag)
    return tags
