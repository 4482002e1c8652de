"""A reading's verdict from its scalars: holds or not, the causes largest first (T4–T12)."""

from __future__ import annotations

import pytest

from cosmo_optim.monitor.dashboard import verdicts
from cosmo_optim.monitor.verdict import base_tag, verdict_of


def test_a_lazy_reading_holds_and_names_no_cause():
    v = verdict_of({"train/duality/relative_residual": 3e-4, "train/ntk/kernel_change": 2e-4})
    assert v.holds is True and v.headline == "holds" and v.causes == () and v.notes == ()


def test_a_failure_names_its_causes_largest_first_with_their_fixes():
    s = {"duality/relative_residual": 0.4, "ntk/kernel_change": 0.3,
         "cosmology/stability_margin": 1.5}
    v = verdict_of(s, interval=50, lr=0.3)
    assert v.holds is False
    # kernel 0.3/0.05 = 6 > margin 1.5/1: the kernel first
    assert [c.name for c in v.causes] == ["kernel moved", "edge of stability"]
    assert "30.0%" in v.causes[0].text and "every ≤ 8 steps" in v.causes[0].text  # 50·0.05/0.3
    assert "lr < 0.2" in v.causes[1].text  # 0.3/1.5


def test_a_failure_below_every_limit_still_names_the_largest_cause():
    v = verdict_of({"duality/relative_residual": 0.2, "ntk/kernel_change": 0.03,
                    "cosmology/stability_margin": 0.01})
    assert v.holds is False and [c.name for c in v.causes] == ["kernel moved"]
    assert "the largest cause measured" in v.causes[0].text


def test_the_background_and_the_forecast_are_notes_not_failures():
    v = verdict_of({"duality/relative_residual": 0.01, "duality/forecast_residual": 1.7,
                    "cosmology/omega_phi": 3.0}, max_lr=1e-4)
    assert v.holds is True and v.causes == ()
    assert [n.name for n in v.notes] == ["not vacuum dominated", "training is not on the probe batch"]
    assert "lr ≤ 0.0001" in v.notes[0].text and "mini-batch noise" in v.notes[1].text


@pytest.mark.parametrize(("scalars", "why"), [
    ({"cosmology/omega_phi": 0.01}, "two consecutive readings"),
    ({"duality/relative_residual": float("nan")}, "did not move"),
])
def test_a_reading_without_a_residual_is_not_measured_and_says_why(scalars, why):
    v = verdict_of(scalars)
    assert v.holds is None and v.headline == "not measured" and why in v.causes[0].text


def test_the_card_states_the_verdict_its_causes_and_the_numbers():
    card = verdicts({"train/duality/relative_residual": 0.4, "train/ntk/kernel_change": 0.3,
                     "train/cosmology/omega_phi": 0.02}, interval=10)
    assert card.startswith("**The dual does not hold**")
    assert "- the kernel moved 30.0% since the previous reading" in card
    assert "| relative residual (T12) | 0.4 |" in card and "| Ω_φ (T6) | 0.02 |" in card
    assert "stability margin" not in card  # not measured: no row


def test_base_tag_strips_any_prefix():
    assert base_tag("train/ntk/lambda_1") == "ntk/lambda_1"
    assert base_tag("a/b/duality/relative_residual") == "duality/relative_residual"
    assert base_tag("train_loss") is None
