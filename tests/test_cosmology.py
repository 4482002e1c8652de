import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosmo_optim import Cosmology, PowerLaw
from cosmo_optim.cosmology import from_units, power_law_momentum, resolve_expansion
from cosmo_optim.optim import as_cosmology

lrs = st.floats(min_value=1e-8, max_value=10.0)
momenta = st.floats(min_value=0.0, max_value=0.999)


def close(a: float, b: float, rel: float = 1e-12) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-15)


def test_worked_example_from_the_units_guide():
    c = Cosmology.from_sgd(lr=1e-3, momentum=0.9)
    assert c.time_step == pytest.approx(0.0316227766)
    assert c.hubble_rate == pytest.approx(0.1 / (3 * math.sqrt(1e-3)))
    assert c.hubble_rate == pytest.approx(1.054, abs=5e-4)
    assert c.vacuum_energy == pytest.approx(3.3333333333)
    assert c.hubble_time_steps == pytest.approx(30.0)
    assert c.efolds_per_step == pytest.approx(0.1 / 3)
    assert c.efolds(300) == pytest.approx(10.0)
    assert c.friction == pytest.approx(3 * c.hubble_rate)
    assert c.hubble_time == pytest.approx(1 / c.hubble_rate)


def test_vacuum_energy_is_three_hubble_squared():
    c = Cosmology.from_sgd(0.02, 0.5)
    assert c.vacuum_energy == pytest.approx(3 * c.hubble_rate**2, rel=1e-14)


def test_repr_shows_both_parameterisations():
    text = repr(Cosmology.from_sgd(1e-3, 0.9))
    for name in ("lr=", "momentum=", "time_step=", "hubble_rate=", "vacuum_energy="):
        assert name in text


def test_is_immutable():
    c = Cosmology.from_sgd(1e-3, 0.9)
    with pytest.raises(AttributeError):
        c.lr = 1.0  # type: ignore[misc]


@given(lrs, momenta)
def test_round_trip_through_vacuum_energy_and_time_step(lr, beta):
    c = Cosmology.from_sgd(lr, beta)
    back = Cosmology.from_vacuum_energy(c.vacuum_energy, time_step=c.time_step)
    assert close(back.lr, lr) and close(back.momentum, beta)


@given(lrs, momenta)
def test_round_trip_through_vacuum_energy_and_momentum(lr, beta):
    c = Cosmology.from_sgd(lr, beta)
    back = Cosmology.from_vacuum_energy(c.vacuum_energy, momentum=c.momentum)
    assert close(back.lr, lr) and close(back.momentum, beta)


@given(lrs, momenta)
def test_round_trip_through_hubble_rate(lr, beta):
    c = Cosmology.from_sgd(lr, beta)
    by_step = Cosmology.from_hubble_rate(c.hubble_rate, time_step=c.time_step)
    by_momentum = Cosmology.from_hubble_rate(c.hubble_rate, momentum=c.momentum)
    for back in (by_step, by_momentum):
        assert close(back.lr, lr) and close(back.momentum, beta)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Cosmology.from_sgd(-1e-3, 0.9), r"Invalid lr: -0\.001.*> 0"),
        (lambda: Cosmology.from_sgd(float("nan"), 0.9), r"Invalid lr: nan"),
        (lambda: Cosmology.from_sgd(1e-3, 1.0), r"Invalid momentum: 1\.0.*0 ≤ momentum < 1"),
        (lambda: Cosmology.from_sgd(1e-3, -0.1), r"Invalid momentum: -0\.1"),
        (
            lambda: Cosmology.from_vacuum_energy(100.0, time_step=0.1),
            r"Invalid vacuum_energy=100\.0 with time_step=0\.1: sqrt\(3\*Λ\)\*Δt = 1\.73205 "
            r"must be ≤ 1 so that momentum ≥ 0\. Use time_step ≤ 0\.057735",
        ),
        (lambda: Cosmology.from_vacuum_energy(0.0, time_step=0.1), r"Invalid vacuum_energy: 0\.0"),
        (lambda: Cosmology.from_vacuum_energy(1.0), r"exactly one of time_step or momentum"),
        (
            lambda: Cosmology.from_vacuum_energy(1.0, time_step=0.1, momentum=0.5),
            r"exactly one of time_step or momentum",
        ),
        (
            lambda: Cosmology.from_hubble_rate(10.0, time_step=0.1),
            r"Invalid hubble_rate=10\.0 with time_step=0\.1: 3\*H\*Δt = 3 must be ≤ 1",
        ),
        (lambda: Cosmology.from_hubble_rate(-1.0, time_step=0.1), r"Invalid hubble_rate: -1\.0"),
        (lambda: Cosmology.from_hubble_rate(1.0, time_step=-0.1), r"Invalid time_step: -0\.1"),
    ],
)
def test_invalid_input_names_value_constraint_and_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_momentum_zero_survives_rounding_in_the_inverse_map():
    c = Cosmology.from_sgd(0.01, 0.0)
    assert Cosmology.from_vacuum_energy(c.vacuum_energy, time_step=c.time_step).momentum == 0.0


def test_power_law_momentum_schedule_matches_t11():
    radiation = PowerLaw(0.5)
    assert radiation.offset == 2
    assert [radiation.momentum(n) for n in range(3)] == pytest.approx([0.25, 0.5, 0.625])
    nesterov = PowerLaw(1.0)
    # β_n = (k − 1)/(k + 2) with k = n + 2: Nesterov's sequence (Su, Boyd & Candès 2016).
    assert [nesterov.momentum(n) for n in range(4)] == pytest.approx(
        [(k - 1) / (k + 2) for k in range(2, 6)]
    )
    assert PowerLaw(2 / 3).offset == 3
    assert PowerLaw(0.5, n0=10).momentum(0) == pytest.approx(0.85)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"power": 0.0}, r"Invalid power-law exponent p=0\.0; it must be > 0"),
        ({"power": 1.0, "n0": 3}, r"Invalid n0=3 for p=1\.0; it must be an integer > 3p = 3"),
        ({"power": 0.5, "n0": 2.5}, r"Invalid n0=2\.5"),
    ],
)
def test_power_law_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PowerLaw(**kwargs)


def test_resolve_expansion_names_the_valid_set():
    assert resolve_expansion("de_sitter") is None
    assert resolve_expansion("matter") == PowerLaw(2 / 3)
    with pytest.raises(ValueError, match=r'Invalid expansion "closed"\. Must be one of \['):
        resolve_expansion("closed")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Cosmology("0.1", 0.9), r"Invalid lr: '0.1'; it must be a real number \(not str\)"),
        (lambda: Cosmology(True, 0.5), r"Invalid lr: True; it must be a real number \(not bool\)"),
        (lambda: Cosmology(0.1, False), r"Invalid momentum: False; it must be a real number"),
        (lambda: Cosmology.from_vacuum_energy("3", momentum=0.5), r"Invalid vacuum_energy: '3'"),
        (lambda: Cosmology(1e-320, 0.5), r"Invalid lr: 1e-320 .* outside the float range. Fix"),
        (lambda: Cosmology(1e308, 0.5), r"Invalid lr: 1e\+308 .* outside the float range"),
        (lambda: Cosmology.from_vacuum_energy(1e308, momentum=0.5), r"Invalid lr"),
        (lambda: Cosmology.from_hubble_rate(1e-320, momentum=0.5), r"Invalid lr"),
        (lambda: from_units({"time_step": 1e200, "momentum": 0.5}), r"invalid time_step: 1e\+200"),
        (lambda: from_units({"time_step": True, "momentum": 0.5}), r"invalid time_step: True"),
    ],
)
def test_only_real_numbers_in_float_range_make_a_universe(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_power_law_momentum_is_one_minus_3p_over_n_plus_n0():
    assert power_law_momentum(0.5, 2, 1) == 1.0 - 1.5 / 3
    assert PowerLaw(2 / 3).momentum(5) == power_law_momentum(2 / 3, 3, 5) == 1.0 - 2.0 / 8


def test_as_cosmology_takes_a_cosmology_or_a_heavy_ball_optimiser():
    import torch

    c = Cosmology(0.01, 0.9)
    assert as_cosmology(c) is c
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01, momentum=0.9)
    assert as_cosmology(opt) == c
    with pytest.raises(ValueError, match=r"Invalid cosmology: 'x'; pass a cosmo_optim.Cosmology"):
        as_cosmology("x")
