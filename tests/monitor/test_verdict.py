"""A reading's verdict from its scalars: holds or not, the causes largest first (T4–T12)."""

from __future__ import annotations

import pytest

from cosmo_optim.monitor.dashboard import verdicts
from cosmo_optim.monitor.verdict import base_tag, verdict_of


def test_a_lazy_reading_holds_and_names_no_cause():
    v = verdict_of({"train/duality/relative_residual": 3e-4, "train/ntk/kernel_change": 2e-4,
                    "train/ntk/mean_field_overlap": 0.99})
    assert v.holds is True and v.headline == "holds" and v.causes == () and v.notes == ()


def test_a_feature_learning_reading_names_the_kernel_with_a_shorter_interval_or_a_lower_lr():
    v = verdict_of({"duality/relative_residual": 0.4, "ntk/kernel_change": 0.3,
                    "cosmology/stability_margin": 0.3}, interval=50)
    assert v.holds is False and [c.name for c in v.causes] == ["kernel moved"]
    assert "30.0%" in v.causes[0].text and "every ≤ 8 steps" in v.causes[0].text  # 50·0.05/0.3
    assert "or lower the lr" in v.causes[0].text


def test_a_kernel_that_moves_more_than_the_tolerance_per_step_asks_for_a_lower_lr():
    v = verdict_of({"duality/relative_residual": 0.16, "ntk/kernel_change": 0.27}, interval=1)
    assert "27.0% per step, so only a lower lr" in v.causes[0].text


def test_steps_beyond_the_edge_over_the_interval_come_first_with_the_factor_to_lower_the_lr():
    """The previous reading's margin is the one the steps in between took: 1.07 there, so the
    edge is the cause and the kernel's huge move its consequence; the fix is an lr 1.07×
    lower, not one computed from the blown-up kernel now (margin 1.5e8)."""
    now = {"duality/relative_residual": 3.0, "ntk/kernel_change": 1.1e8,
           "cosmology/stability_margin": 1.5e8}
    v = verdict_of(now, previous={"cosmology/stability_margin": 1.07}, interval=10)
    assert [c.name for c in v.causes] == ["edge of stability", "kernel moved"]
    assert "over this interval" in v.causes[0].text and "an lr 1.07× lower" in v.causes[0].text
    assert v.notes[0].name == "edge of stability" and "from this reading on" in v.notes[0].text


def test_the_first_reading_beyond_the_edge_says_so_though_nothing_is_measured_yet():
    v = verdict_of({"cosmology/stability_margin": 1.07})
    assert v.holds is None and "two consecutive readings" in v.causes[0].text
    assert v.notes[0].name == "edge of stability" and "1.07" in v.notes[0].text


def test_a_run_that_holds_at_the_edge_of_stability_gets_a_note():
    v = verdict_of({"duality/relative_residual": 0.01, "cosmology/stability_margin": 0.9},
                   previous={"cosmology/stability_margin": 1.05})
    assert v.holds is True and v.notes[0].name == "edge of stability"
    assert "which training weathered" in v.notes[0].text


def test_a_failure_below_every_limit_names_the_largest_or_says_it_is_unexplained():
    near = verdict_of({"duality/relative_residual": 0.2, "ntk/kernel_change": 0.03,
                       "cosmology/stability_margin": 0.01})
    assert [c.name for c in near.causes] == ["kernel moved"]
    assert "the largest cause measured" in near.causes[0].text
    none = verdict_of({"duality/relative_residual": 0.1, "ntk/kernel_change": 0.0,
                       "cosmology/stability_margin": 0.008})
    assert [c.name for c in none.causes] == ["unexplained"]
    assert "≥ 1" not in none.causes[0].text and "kernel moved 0" in none.causes[0].text


def test_a_residual_within_reach_of_rounding_is_not_a_measurement():
    v = verdict_of({"duality/relative_residual": 0.12, "duality/rounding_floor": 0.08,
                    "ntk/kernel_change": 0.0})
    assert v.holds is None and v.causes[0].name == "rounding" and "0.08" in v.causes[0].text


def test_the_background_the_forecast_and_a_missing_mean_field_mode_are_notes():
    v = verdict_of({"duality/relative_residual": 0.01, "duality/forecast_residual": 1.7,
                    "cosmology/omega_phi": 3.0, "ntk/mean_field_overlap": 0.6}, max_lr=1e-4)
    assert v.holds is True and v.causes == ()
    assert [n.name for n in v.notes] == ["not vacuum dominated", "no mean-field mode",
                                         "training is not on the probe batch"]
    assert "lr ≤ 0.0001" in v.notes[0].text and "mean kernel entry" in v.notes[1].text
    assert "mini-batch noise" in v.notes[2].text


@pytest.mark.parametrize(("scalars", "why"), [
    ({"cosmology/omega_phi": 0.01}, "two consecutive readings"),
    ({"duality/relative_residual": float("nan")}, "did not move"),
])
def test_a_reading_without_a_residual_is_not_measured_and_says_why(scalars, why):
    v = verdict_of(scalars)
    assert v.holds is None and v.headline == "is not measured" and why in v.causes[0].text


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
