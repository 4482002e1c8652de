import copy

import pytest
import torch
from torch import nn

from cosmo_optim import Cosmology, CosmoSGD, PowerLaw, cosmology_of

COSMO = Cosmology.from_sgd(lr=0.01, momentum=0.9)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )


def batches(steps: int):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 8, generator=g), torch.randn(16, 3, generator=g)) for _ in range(steps)
    ]


def train(model, opt, data, scheduler=None, on_step=None):
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if on_step:
            on_step(opt)
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


CONSTRUCTORS = {
    "cosmology": {"cosmology": COSMO},
    "vacuum_energy+time_step": {"vacuum_energy": COSMO.vacuum_energy, "time_step": 0.1},
    "vacuum_energy+momentum": {"vacuum_energy": 3.3, "momentum": 0.9},
    "hubble_rate+time_step": {"hubble_rate": 1.05, "time_step": 0.0316},
    "hubble_rate+momentum": {"hubble_rate": 1.05, "momentum": 0.5},
    "time_step+momentum": {"time_step": 0.1, "momentum": 0.9},
}


@pytest.mark.parametrize("kwargs", CONSTRUCTORS.values(), ids=CONSTRUCTORS.keys())
@pytest.mark.parametrize("foreach", [False, True])
def test_bitwise_identical_to_torch_sgd_over_200_steps(kwargs, foreach):
    data = batches(200)
    model = mlp()
    opt = CosmoSGD(model.parameters(), foreach=foreach, **kwargs)
    group = opt.param_groups[0]
    reference_model = mlp()
    reference = torch.optim.SGD(
        reference_model.parameters(), lr=group["lr"], momentum=group["momentum"], foreach=foreach
    )
    assert_bitwise(train(model, opt, data), train(reference_model, reference, data))


def test_constructors_land_on_the_units_they_name():
    model = mlp()
    opt = CosmoSGD(model.parameters(), vacuum_energy=3.3, time_step=0.03)
    assert opt.cosmology().vacuum_energy == pytest.approx(3.3, rel=1e-12)
    assert opt.cosmology().time_step == pytest.approx(0.03, rel=1e-12)
    opt = CosmoSGD(model.parameters(), hubble_rate=1.05, time_step=0.0316)
    assert opt.cosmology().hubble_rate == pytest.approx(1.05, rel=1e-12)


def test_foreach_and_for_loop_paths_agree():
    data = batches(50)
    runs = []
    for foreach in (False, True):
        model = mlp()
        opt = CosmoSGD(model.parameters(), hubble_rate=1.0, time_step=0.1, foreach=foreach)
        runs.append(train(model, opt, data))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", [{"weight_decay": 1e-2}, {"maximize": True}])
def test_weight_decay_and_maximize_behave_as_in_sgd(options):
    data = batches(30)
    model, reference_model = mlp(), mlp()
    opt = CosmoSGD(model.parameters(), cosmology=COSMO, **options)
    reference = torch.optim.SGD(reference_model.parameters(), lr=0.01, momentum=0.9, **options)
    assert_bitwise(train(model, opt, data), train(reference_model, reference, data))


def test_state_dict_round_trip_continues_as_if_uninterrupted(tmp_path):
    data = batches(200)
    model = mlp()
    opt = CosmoSGD(model.parameters(), vacuum_energy=3.3, time_step=0.03)
    uninterrupted = train(model, opt, data)

    model = mlp()
    opt = CosmoSGD(model.parameters(), vacuum_energy=3.3, time_step=0.03)
    train(model, opt, data[:100])
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt")
    resumed_model = mlp(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = CosmoSGD(resumed_model.parameters(), hubble_rate=9.0, momentum=0.1)
    resumed.load_state_dict(saved["opt"])
    assert_bitwise(train(resumed_model, resumed, data[100:]), uninterrupted)


def test_loads_a_torch_sgd_checkpoint_and_back():
    data = batches(40)
    model = mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train(model, sgd, data[:20])
    twin = copy.deepcopy(model)
    cosmo = CosmoSGD(twin.parameters(), cosmology=Cosmology.from_sgd(0.5, 0.1))
    cosmo.load_state_dict(copy.deepcopy(sgd.state_dict()))
    assert cosmo.cosmology() == COSMO
    assert_bitwise(train(twin, cosmo, data[20:]), train(model, sgd, data[20:]))
    back = torch.optim.SGD(model.parameters(), lr=1.0)
    back.load_state_dict(cosmo.state_dict())
    assert back.param_groups[0]["momentum"] == 0.9


def test_schedulers_compose_and_the_physical_view_follows_them():
    data = batches(60)
    model, reference_model = mlp(), mlp()
    opt = CosmoSGD(model.parameters(), cosmology=COSMO)
    reference = torch.optim.SGD(reference_model.parameters(), lr=0.01, momentum=0.9)

    def one_cycle(o):
        return torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=0.05,
            total_steps=60,
            cycle_momentum=True,
            base_momentum=0.8,
            max_momentum=0.95,
        )

    seen = []

    def record(o):
        group = o.param_groups[0]
        seen.append(o.cosmology())
        assert seen[-1] == Cosmology.from_sgd(group["lr"], group["momentum"])

    got = train(model, opt, data, one_cycle(opt), on_step=record)
    assert_bitwise(got, train(reference_model, reference, data, one_cycle(reference)))
    assert len({c.lr for c in seen}) > 10 and len({c.momentum for c in seen}) > 10


def test_param_groups_carry_their_own_units():
    model = mlp()
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = CosmoSGD(
        [{"params": first, "vacuum_energy": 12.0}, {"params": rest, "lr": 0.1}],
        vacuum_energy=3.0,
        time_step=0.1,
    )
    assert opt.cosmology(0).vacuum_energy == pytest.approx(12.0)
    assert opt.cosmology(0).time_step == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == 0.1
    assert opt.param_groups[1]["momentum"] == opt.defaults["momentum"]
    opt.add_param_group(
        {"params": [nn.Parameter(torch.zeros(2))], "hubble_rate": 2.0, "momentum": 0.4}
    )
    assert opt.cosmology(2).hubble_rate == pytest.approx(2.0)
    assert "vacuum_energy" not in opt.param_groups[0]  # lr and momentum are authoritative


@pytest.mark.parametrize("name", ["radiation", "matter", "nesterov"])
def test_power_law_expansion_is_sgd_with_momentum_beta_n(name):
    history = {"radiation": PowerLaw(0.5), "matter": PowerLaw(2 / 3), "nesterov": PowerLaw(1.0)}[
        name
    ]
    data = batches(50)
    model, reference_model = mlp(), mlp()
    opt = CosmoSGD(model.parameters(), time_step=0.1, expansion=name)
    reference = torch.optim.SGD(
        reference_model.parameters(), lr=opt.param_groups[0]["lr"], momentum=0.5
    )
    steps = iter(range(50))

    def schedule(o):
        o.param_groups[0]["momentum"] = 1 - 3 * history.power / (next(steps) + history.offset)

    assert_bitwise(
        train(model, opt, data), train(reference_model, reference, data, on_step=schedule)
    )
    assert opt.param_groups[0]["expansion_step"] == 50
    assert opt.cosmology().momentum == pytest.approx(history.momentum(49))


def test_power_law_step_counter_survives_state_dict():
    data = batches(40)
    model = mlp()
    opt = CosmoSGD(model.parameters(), time_step=0.1, expansion=PowerLaw(0.5, n0=4))
    uninterrupted = train(model, opt, data)
    model = mlp()
    opt = CosmoSGD(model.parameters(), time_step=0.1, expansion="radiation")
    train(model, opt, data[:20])
    state = copy.deepcopy(opt.state_dict())
    fresh = CosmoSGD(model.parameters(), cosmology=COSMO)  # de Sitter until it loads the state
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["expansion_step"] == 20
    # different n0: the resumed run follows the saved radiation history, not the new one
    assert not all(
        torch.equal(a, b)
        for a, b in zip(train(model, fresh, data[20:]), uninterrupted, strict=True)
    )


def test_power_law_resume_matches_uninterrupted_run():
    data = batches(40)
    model = mlp()
    opt = CosmoSGD(model.parameters(), time_step=0.1, expansion="nesterov")
    uninterrupted = train(model, opt, data)
    model = mlp()
    opt = CosmoSGD(model.parameters(), time_step=0.1, expansion="nesterov")
    train(model, opt, data[:20])
    fresh = CosmoSGD(model.parameters(), cosmology=COSMO)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert_bitwise(train(model, fresh, data[20:]), uninterrupted)


def test_step_hooks_fire_once_per_step():
    model = mlp()
    torch.optim.SGD(mlp().parameters(), lr=0.1)  # patches SGD.step too
    opt = CosmoSGD(model.parameters(), time_step=0.1, expansion="matter")
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    train(model, opt, batches(3))
    assert len(calls) == 3 and opt.param_groups[0]["expansion_step"] == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {},
            r"CosmoSGD: got no physics units; give exactly two of \['vacuum_energy', 'hubble_rate', ",
        ),
        ({"time_step": 0.1}, r"got \['time_step'\]; give exactly two"),
        (
            {"vacuum_energy": 1.0, "time_step": 0.1, "momentum": 0.9},
            r"got \['momentum', 'time_step', 'vacuum_energy'\]; give exactly two",
        ),
        ({"vacuum_energy": 3.0, "hubble_rate": 1.0}, r"not independent \(Λ = 3H²\)"),
        ({"cosmology": COSMO, "time_step": 0.1}, r"cosmology together with \['time_step'\]"),
        ({"cosmology": 0.01}, r"invalid cosmology 0\.01; it must be a cosmo_optim\.Cosmology"),
        ({"vacuum_energy": 1e4, "time_step": 0.1}, r"sqrt\(3\*Λ\)\*Δt = 17\.3205 must be ≤ 1"),
        ({"time_step": -0.1, "momentum": 0.9}, r"invalid time_step: -0\.1"),
        ({"time_step": 0.1, "momentum": 1.2}, r"Invalid momentum: 1\.2"),
        (
            {"time_step": 0.1, "momentum": 0.9, "expansion": "matter"},
            r"give time_step alone \(got \['momentum'\]\)",
        ),
        ({"time_step": 0.1, "expansion": "open"}, r'Invalid expansion "open"\. Must be one of'),
    ],
)
def test_invalid_configuration_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosmoSGD(mlp().parameters(), **kwargs)


def test_group_mixing_lr_and_units_is_rejected():
    params = list(mlp().parameters())
    with pytest.raises(
        ValueError, match=r"param group 0: got lr together with \['vacuum_energy'\]"
    ):
        CosmoSGD([{"params": params, "lr": 0.1, "vacuum_energy": 2.0}], cosmology=COSMO)


def test_cosmology_of_rejects_optimisers_without_a_de_sitter_dual():
    params = list(mlp().parameters())
    with pytest.raises(ValueError, match=r"Adam is not heavy-ball momentum SGD, so it has no de Sitter dual"):
        cosmology_of(torch.optim.Adam(params))
    with pytest.raises(ValueError, match=r"dampening=0 and nesterov=False"):
        cosmology_of(torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True))
    with pytest.raises(ValueError, match=r"Invalid group=3; the optimiser has 1 param group"):
        cosmology_of(torch.optim.SGD(params, lr=0.1), group=3)


def test_from_suggestion_runs_at_the_suggested_universe():
    class Suggested:
        cosmology = Cosmology.from_sgd(0.05, 0.7)

    opt = CosmoSGD.from_suggestion(mlp().parameters(), Suggested(), weight_decay=1e-3)
    assert opt.cosmology() == Suggested.cosmology
    assert opt.param_groups[0]["weight_decay"] == 1e-3
    with pytest.raises(ValueError, match=r"Invalid suggestion: dict has no Cosmology in `\.cosmology`"):
        CosmoSGD.from_suggestion(mlp().parameters(), {"lr": 0.1})


def _params():
    return [torch.zeros(2, requires_grad=True)]


def test_lr_keyword_points_at_cosmology_from_sgd_and_torch_sgd():
    with pytest.raises(ValueError, match=r"CosmoSGD takes physics units, not lr=0.01. Fix: CosmoSGD\(params, cosmology=Cosmology.from_sgd\(lr=0.01, momentum=0.9\)\), or torch.optim.SGD\(params, lr=0.01, momentum=0.9\)"):
        CosmoSGD(_params(), lr=0.01, momentum=0.9)


@pytest.mark.parametrize(
    ("group", "match"),
    [
        ({"lr": -1.0}, r"param group 0: invalid lr: -1.0; it must be a real number ≥ 0"),
        ({"lr": "0.1"}, r"param group 0: invalid lr: '0.1'"),
        ({"lr": True}, r"param group 0: invalid lr: True"),
        ({"lr": 0.1, "momentum": 1.0}, r"invalid momentum: 1.0; it must be a real number with 0 ≤ momentum < 1"),
        ({"lr": 0.1, "momentum": -0.1}, r"invalid momentum: -0.1"),
        ({"vacuum_energy": "3", "time_step": 0.1}, r"Invalid vacuum_energy: '3'; it must be a real number"),
    ],
)
def test_param_groups_with_bad_lr_or_momentum_are_refused(group, match):
    with pytest.raises(ValueError, match=match):
        CosmoSGD([{"params": _params(), **group}], vacuum_energy=3.0, time_step=0.1)
    opt = CosmoSGD(_params(), vacuum_energy=3.0, time_step=0.1)
    with pytest.raises(ValueError, match=match.replace("group 0", "group 1")):
        opt.add_param_group({"params": _params(), **group})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time_step": True, "momentum": 0.5}, r"invalid time_step: True"),
        ({"time_step": 1e200, "expansion": "radiation"}, r"invalid time_step: 1e\+200"),
        ({"time_step": 1e-200, "momentum": 0.5}, r"invalid time_step: 1e-200"),
        ({"vacuum_energy": 1e308, "momentum": 0.5}, r"Invalid lr"),
        ({"hubble_rate": "1", "momentum": 0.5}, r"Invalid hubble_rate: '1'"),
    ],
)
def test_extreme_or_non_numeric_units_give_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosmoSGD(_params(), **kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9),
        lambda p: torch.optim.Adam(p),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1),
    ],
)
def test_only_heavy_ball_sgd_has_a_universe(make):
    with pytest.raises(ValueError, match=r"de Sitter dual|heavy-ball momentum with dampening=0"):
        cosmology_of(make(_params()))
