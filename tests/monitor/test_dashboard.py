"""The dashboard's words and charts (issues #21 item 7, #32 item 1): a description with units
for every scalar tag and log10 view, one quantity per chart, log10 views of what spans
decades, and only the charts a run fills (the verdict card: tests/monitor/test_verdict.py)."""

from __future__ import annotations

import math
import re

import pytest

from cosmo_optim.monitor import SCALAR_TAGS, scalar_tags
from cosmo_optim.monitor.dashboard import (
    CHARTS,
    DESCRIPTIONS,
    LOG10_OF,
    custom_scalar_layout,
    description,
    log10_views,
)


def test_every_scalar_tag_and_log10_view_has_a_description_under_any_prefix():
    assert set(DESCRIPTIONS) == set(SCALAR_TAGS) | set(LOG10_OF)
    assert set(LOG10_OF.values()) <= set(SCALAR_TAGS)
    for tag in scalar_tags(3, prefix="train/"):
        assert description(tag), tag
    assert description("train/modes/amplitude_3") == DESCRIPTIONS["modes/amplitude_{k}"]
    assert description("ntk/lambda_1") == DESCRIPTIONS["ntk/lambda_1"]
    assert description("train/ntk/log10_ratio_2").startswith("log10 of ntk/ratio_{k}")
    assert description("train_loss") is None


def test_log10_views_are_the_base_10_logarithms_of_positive_finite_values_only():
    scalars = {"train/duality/relative_residual": 0.002, "ntk/ratio_3": 0.25,
               "cosmology/slow_roll_eta": 0.5, "ntk/kernel_change": 0.0,
               "cosmology/omega_phi": math.inf}
    views = log10_views(scalars)
    assert views == pytest.approx({"train/duality/log10_relative_residual": math.log10(0.002),
                                   "ntk/log10_ratio_3": math.log10(0.25)}, abs=1e-9)
    assert views.keys() == {"train/duality/log10_relative_residual", "ntk/log10_ratio_3"}


def test_a_constant_read_with_float_rounding_has_a_log10_view_of_exactly_zero():
    """Λ = (1 − β)²/(3η) = 1 computed as 1 − 1e-16: its chart's axis must not be ±1e-16."""
    lam = (1 - 0.9) ** 2 / (3 * (0.01 / 3))
    views = log10_views({"cosmology/vacuum_energy": lam, "cosmology/hubble_rate": 0.5 ** 0.5})
    assert views["cosmology/log10_vacuum_energy"] == 0.0
    assert math.copysign(1, views["cosmology/log10_vacuum_energy"]) == 1.0  # not −0.0
    assert views["cosmology/log10_hubble_rate"] == pytest.approx(-0.150515, abs=1e-6)


def _families() -> list[str]:
    """Every tag a run with 3 modes can write, views included, as families (one per {k})."""
    tags = scalar_tags(3) + [v.format(k=2) for v in LOG10_OF]
    return sorted(set(tags))


def test_each_chart_holds_one_quantity_and_the_ones_that_span_decades_are_log10():
    tags = _families()
    for _, charts in CHARTS:
        for title, pattern in charts:
            matched = {re.sub(r"_\d+$", "_{k}", t) for t in tags if re.fullmatch(pattern, t)}
            assert len(matched) == 1, (title, matched)  # one quantity (per mode: one family)
    charted = {t for _, charts in CHARTS for _, p in charts for t in tags if re.fullmatch(p, t)}
    for quantity in ("cosmology/hubble_rate", "cosmology/vacuum_energy", "cosmology/omega_phi",
                     "duality/relative_residual", "duality/residual", "ntk/kernel_change",
                     "ntk/lambda_1", "duality/forecast_residual"):
        group, name = quantity.split("/")
        assert f"{group}/log10_{name}" in charted, quantity
    assert "cosmology/efolds" in charted and "cosmology/slow_roll_eta" in charted


def test_the_layout_holds_only_the_charts_the_run_fills_and_serves_either_prefix():
    adam = ["ntk/log10_lambda_1", "ntk/log10_ratio_2", "modes/amplitude_1",
            "duality/log10_relative_residual"]
    layout = custom_scalar_layout("", adam)
    charts = {title: rx for category in layout.values() for title, (_, rx) in category.items()}
    assert len(charts) == 4 and not any("Hubble" in t or "Ω_φ" in t for t in charts)
    (regex,) = charts[next(t for t in charts if t.startswith("relative residual"))]
    assert re.search(regex, "duality/log10_relative_residual")
    assert re.search(regex, "train/duality/log10_relative_residual")  # the HF Trainer's name
    assert not re.search(regex, "b/duality/log10_relative_residual")
    full = custom_scalar_layout("b/")
    assert all(title.startswith("cosmo-optim b/: ") for title in full)
    assert sum(len(c) for c in full.values()) == sum(len(c) for _, c in CHARTS)
