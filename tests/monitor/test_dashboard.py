"""The dashboard's words (issue #21 item 7): a description with units for every scalar tag and
charts of one scale (the verdict card: tests/monitor/test_verdict.py)."""

from __future__ import annotations

import re

from cosmo_optim.monitor import SCALAR_TAGS, scalar_tags
from cosmo_optim.monitor.dashboard import DESCRIPTIONS, custom_scalar_layout, description


def test_every_scalar_tag_has_a_description_under_any_prefix():
    assert set(DESCRIPTIONS) == set(SCALAR_TAGS)
    for tag in scalar_tags(3, prefix="train/"):
        assert description(tag), tag
    assert description("train/modes/amplitude_3") == DESCRIPTIONS["modes/amplitude_{k}"]
    assert description("ntk/lambda_1") == DESCRIPTIONS["ntk/lambda_1"]
    assert description("train_loss") is None


def test_each_chart_holds_one_scale_omega_phi_alone():
    tags = scalar_tags(3)
    charts = [(title, rx) for category in custom_scalar_layout().values()
              for title, (_, rx) in category.items()]
    for title, regexes in charts:
        matched = {t for t in tags if any(re.search(r, t) for r in regexes)}
        assert matched, title
        if "cosmology/omega_phi" in matched:
            assert matched == {"cosmology/omega_phi"}, title
    charted = {t for _, rx in charts for t in tags if any(re.search(r, t) for r in rx)}
    assert {"cosmology/hubble_rate", "cosmology/vacuum_energy", "cosmology/efolds",
            "duality/residual", "duality/relative_residual", "duality/forecast_residual",
            "ntk/kernel_change"} <= charted
