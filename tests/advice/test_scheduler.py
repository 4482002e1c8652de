"""CosmologyScheduler: the re-plan is Polyak's heavy ball on the current curvatures (T8, T10),
on schedule, backs off after a loss jump, resumes from its state, leaves the model alone."""

import itertools
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim import CosmologyScheduler


def linear_problem(n=40, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [1.0]], dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    return model, x, y


def test_the_first_plan_is_polyaks_optimum_with_the_stiffest_curvature_times_8():
    # The first plan uses the one-shot advice's safety 1/8 whatever the cap: κ_max = 8 max κ.
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.0)
    sched = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=10**6, safety=1.0,
                               residual_fraction=1.0)
    eig = np.linalg.eigvalsh((2.0 / len(x)) * (x.T @ x).numpy())  # MSE Hessian, independent
    lo, hi = math.sqrt(eig.min()), math.sqrt(8.0 * eig.max())
    assert opt.param_groups[0]["lr"] == pytest.approx(4.0 / (hi + lo) ** 2, rel=1e-6)
    assert opt.param_groups[0]["momentum"] == pytest.approx(((hi - lo) / (hi + lo)) ** 2, rel=1e-5)
    assert sched.cosmology.lr == opt.param_groups[0]["lr"]
    lr, beta = opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]
    assert lr * eig.max() / (2 * (1 + beta)) < 0.125  # the T10 stability margin ≤ safety


def test_safety_doubles_while_the_loss_falls_up_to_its_cap_and_the_lr_at_most_doubles():
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=10**4, safety=0.5,
                               first_replan=2)
    train(model, opt, sched, x, y, 30)
    safeties = [h["safety"] for h in sched.history]
    assert safeties[:4] == [0.125, 0.25, 0.5, 0.5]
    lrs = [h["lr"] for h in sched.history]
    assert all(b <= 2 * a * (1 + 1e-12) for a, b in itertools.pairwise(lrs))


def train(model, opt, sched, x, y, steps, jump_at=None):
    for n in range(1, steps + 1):
        opt.zero_grad()
        value = nn.functional.mse_loss(model(x), y)
        value.backward()
        opt.step()
        sched.step(1e9 if n == jump_at else value.item())


def test_replans_at_doubling_intervals_and_every_group_gets_the_plan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(32, 2), torch.randn(32, 1)
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.1)
    sched = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=100, first_replan=5)
    train(model, opt, sched, x, y, 100)
    assert [h["step"] for h in sched.history] == [0, 5, 15, 35, 75]
    last = sched.history[-1]
    assert all((g["lr"], g["momentum"]) == (last["lr"], last["momentum"]) for g in opt.param_groups)


def test_a_loss_jump_halves_the_safety_and_replans_at_once():
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=100, safety=0.5)
    train(model, opt, sched, x, y, 3, jump_at=3)
    assert [h["step"] for h in sched.history] == [0, 3]
    assert [h["safety"] for h in sched.history] == [0.125, 0.0625]


def test_state_dict_round_trip_resumes_the_schedule():
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=100)
    train(model, opt, sched, x, y, 12)
    other = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=100)
    other.load_state_dict(sched.state_dict())
    assert other.state_dict() == sched.state_dict()


def test_the_model_buffers_and_rng_are_untouched_by_a_replan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())  # noqa: NPY002
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=10)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert torch.equal(rng[0], torch.get_rng_state())
    assert np.array_equal(rng[1], np.random.get_state()[1]) and rng[2] == random.getstate()  # noqa: NPY002


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon_steps": 0}, "Invalid horizon_steps: 0"),
        ({"safety": 0.0}, r"Invalid safety: 0.0; it must be in \(0, 1\]"),
        ({"residual_fraction": 2.0}, r"Invalid residual_fraction: 2.0"),
        ({"first_replan": 0}, "Invalid first_replan: 0"),
        ({"backoff": 1.0}, "Invalid backoff: 1.0; it must be > 1"),
    ],
)
def test_bad_arguments_name_the_value_and_the_constraint(kwargs, message):
    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    args = {"horizon_steps": 10} | kwargs
    with pytest.raises(ValueError, match=message):
        CosmologyScheduler(opt, model, nn.MSELoss(), x, y, **args)


def test_with_a_target_the_replan_damps_the_modes_needed_before_it_as_the_one_shot_advice_does():
    from cosmo_optim import suggest_hyperparameters

    model, x, y = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=500, target_loss=0.5)
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=500, target_loss=0.5,
                                safety=0.125)
    # Same probe, same safety (1/8) at the first plan: the same fixed point, hence the same plan.
    assert sched.history[0]["lr"] == pytest.approx(s.lr, rel=1e-9)
    assert sched.history[0]["momentum"] == pytest.approx(s.momentum, rel=1e-9)
    with pytest.raises(ValueError, match="Invalid target_loss: nan"):
        CosmologyScheduler(opt, model, nn.MSELoss(), x, y, horizon_steps=5, target_loss=math.nan)
