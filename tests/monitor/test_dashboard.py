"""The dashboard's words (issue #21 item 7): a description with units for every scalar tag,
charts of one scale, and verdicts that say what Ω_φ and the relative residual mean (T6, T10)."""

from __future__ import annotations

import re

import pytest

from cosmo_optim.monitor import SCALAR_TAGS, scalar_tags
from cosmo_optim.monitor.dashboard import (
    DESCRIPTIONS,
    custom_scalar_layout,
    description,
    verdicts,
)


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
            "duality/residual", "duality/relative_residual"} <= charted


@pytest.mark.parametrize(("omega", "residual", "words"), [
    (0.01, 0.05, ["good: vacuum dominated", "good: the discrete NTK map predicts training"]),
    (166.0, 2.5, ["bad: the field's energy exceeds Λ", "bad: no better than predicting no"]),
    (0.5, 0.4, ["marginal", "fair"]),
])
def test_the_verdicts_card_says_what_the_values_mean(omega, residual, words):
    card = verdicts({"train/cosmology/omega_phi": omega,
                     "train/duality/relative_residual": residual})
    assert all(w in card for w in words), card
    assert f"{omega:.4g}" in card and "stability margin (T10) | — | not measured" in card
