"""The margin from measurement (advice/margin.py, trial.py) and the warnings: a lazy model keeps
the heavy-ball optimum at the edge, a sharpening one is planned for the edge where it ends,
one no margin can hold says so, a target the model cannot reach is reported, an edge that
moves after the trial is caught by the longer check, and a subset's time to target is checked
on all inputs."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim import suggest_hyperparameters


def polyak(kappa_max, kappa_min):
    lr = 4.0 / (math.sqrt(kappa_max) + math.sqrt(kappa_min)) ** 2
    root = (math.sqrt(kappa_max) - math.sqrt(kappa_min)) / (math.sqrt(kappa_max) + math.sqrt(kappa_min))
    return lr, root**2


def realisable_linear_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [1.0]], dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    return model, x, y


def test_a_lazy_model_holds_at_the_edge_and_gets_polyaks_optimum():
    # A linear model's kernel never moves: the boldest rung (margin 1) holds, and the plan is
    # Polyak's heavy ball for the Hessian's extreme eigenvalues (independent: (2/N) XᵀX).
    model, x, y = realisable_linear_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lazy, realisable problem raises no warning
        s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=2000,
                                    target_loss=1e-8, residual_fraction=1.0)
    eig = np.linalg.eigvalsh((2.0 / len(x)) * (x.T @ x).numpy())
    lr, momentum = polyak(eig.max(), eig.min())
    # One rung; its trial followed the map towards a far target, so it was rerun longer.
    assert s.safety == 1.0 and 1 <= len(s.margin_trials) <= 2
    assert all(m == 1.0 and v in ("held", "reached") for m, v, _ in s.margin_trials)
    assert s.lr == pytest.approx(lr, rel=1e-8) and s.momentum == pytest.approx(momentum, rel=1e-8)
    assert s.edge_growth == pytest.approx(1.0, rel=1e-9) and s.predictable


def deep_linear(w0):
    """f(x) = w₂ w₁ x: the NTK (w₁² + w₂²) x x' grows as the product does (sharpening)."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.fill_(w0)
        model[1].weight.fill_(w0)
    return model


X = torch.linspace(1, 2, 16, dtype=torch.float64)[:, None]


def test_a_sharpening_model_gets_a_margin_that_is_stable_where_training_ends():
    # From w = 0.3 to the product 3 the kernel grows ~33×. Independent reference: the Hessian
    # of mean (w₂w₁x − 3x)² at the balanced minimum w₁ = w₂ = √3 has top eigenvalue
    # 2 E[x²] (w₁² + w₂²) = 12 E[x²]; no heavy ball with η λ ≥ 2(1 + β) can settle there.
    y = 3.0 * X
    top = 12.0 * float((X**2).mean())
    with pytest.warns(UserWarning) as record:
        bold = suggest_hyperparameters(deep_linear(0.3), nn.MSELoss(), X, y, horizon_steps=300,
                                       target_loss=1e-3, safety=1.0)
    assert "no progress in the trial: the trial at safety=1 rose above" in str(record[0].message)
    assert bold.lr * top > 2 * (1 + bold.momentum)  # the kernel at initialisation misleads
    model = deep_linear(0.3)
    s = suggest_hyperparameters(model, nn.MSELoss(), X, y, horizon_steps=300, target_loss=1e-3)
    assert s.lr * top < 2 * (1 + s.momentum)
    assert s.safety < 1 and s.margin_trials[0][1] == "crossed"
    assert s.margin_trials[-1][1] in ("held", "reached") and s.edge_growth > 10
    opt = s.optimizer(model.parameters())
    for _ in range(300):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), y)
        if loss.item() <= 1e-3:
            break
        loss.backward()
        opt.step()
    assert loss.item() <= 1e-3


def test_no_margin_holds_when_the_kernel_grows_beyond_every_rung_and_it_says_so():
    # From w = 1e-3 to the product 100 the kernel grows ~1e8×, beyond the smallest margin
    # (1/256): every trial rises above its start, and both warnings fire.
    with pytest.warns(UserWarning) as record:
        s = suggest_hyperparameters(deep_linear(1e-3), nn.MSELoss(), X, 100.0 * X,
                                    horizon_steps=300, target_loss=1e-3)
    messages = [str(w.message) for w in record]
    assert any("no progress in the trial: at every margin from 1 to 0.00390625" in m
               for m in messages)
    assert any("misses target_loss=0.001 within horizon_steps=300" in m for m in messages)
    assert all(v == "crossed" for _, v, _ in s.margin_trials) and len(s.margin_trials) == 9
    assert s.warnings == tuple(messages)


def noisy_linear_problem():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-1.0], [0.5], [2.0]], dtype=torch.float64)
    y = y + 0.5 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    floor = nn.functional.mse_loss(x @ torch.linalg.lstsq(x, y).solution, y).item()
    return model, x, y, floor


def test_a_target_below_what_the_model_can_reach_warns_and_one_above_does_not():
    model, x, y, floor = noisy_linear_problem()  # floor: least squares, independent
    with pytest.warns(UserWarning, match=r"misses target_loss=.* within horizon_steps=500: "
                                         r"the frozen-kernel map \(T10\) ends at loss"):
        s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=500,
                                    target_loss=0.5 * floor)
    assert s.predicted_steps is None and s.predict_loss(500) > 0.5 * floor
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=500,
                                    target_loss=1.5 * floor)
    assert s.predicted_steps is not None and s.predicted_steps <= 500 and not s.warnings


def test_a_trials_rate_extrapolates_its_geometric_decay_to_the_goal():
    from cosmo_optim.advice.trial import TrialRun

    run = TrialRun(0.9 ** np.arange(31), "held", nn.Identity())
    # 0.9ⁿ = 0.01 at n = ln 0.01 / ln 0.9 (independent closed form).
    assert run.steps_to(0.01) == pytest.approx(math.log(0.01) / math.log(0.9))
    assert TrialRun(np.ones(31), "stalled", nn.Identity()).steps_to(0.01) == math.inf
    assert TrialRun(np.array([1.0, 0.5, 0.004]), "reached", nn.Identity()).steps_to(0.01) == 2


def four_class_mse_problem():
    """MSE on one-hot labels of 4 classes with a tanh MLP: its sharpness grows to the edge of
    stability during training (the kind of task of docs/advice.md's edge-of-stability rows)."""
    from sklearn.datasets import make_classification

    xc, yc = make_classification(n_samples=200, n_features=10, n_informative=6, n_classes=4,
                                 n_clusters_per_class=2, random_state=3)
    x = torch.tensor((xc - xc.mean(0)) / xc.std(0), dtype=torch.float32)
    y = nn.functional.one_hot(torch.tensor(yc), 4).float()
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 4))
    return model, x, y


def first_rise(model, x, y, s, steps=120):
    """Independent reference: torch SGD at the suggestion; the first step whose loss is above
    the initial loss, or None."""
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=s.lr, momentum=s.momentum)
    start = None
    for n in range(steps + 1):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        start = loss.item() if start is None else start
        if not loss.item() <= start:
            return n
        loss.backward()
        opt.step()
    return None


def test_a_trial_that_follows_the_map_is_rerun_towards_the_target_and_catches_a_late_edge():
    """At margin 1/4 the 30-step trial follows the frozen-kernel map, which puts the target
    ~200 steps away; training there leaves its start after ~60 steps (the sharpness grows past
    the edge). The rerun (≤ 120 steps) sees it, and the margin measured is one rung lower,
    where training stays below its start."""
    pytest.importorskip("sklearn")
    model, x, y = four_class_mse_problem()
    kwargs = dict(horizon_steps=300, target_loss=0.02)
    fixed = suggest_hyperparameters(model, nn.MSELoss(), x, y, safety=0.25, **kwargs)
    assert fixed.margin_trials == ((0.25, "held", 30),) and fixed.predicted_steps > 120
    assert 30 < first_rise(model, x, y, fixed) <= 120  # a late crossing the trial did not see
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, **kwargs)
    quarter = [(v, n) for m, v, n in s.margin_trials if m == 0.25]
    assert quarter[0] == ("held", 30) and quarter[1][0] == "crossed" and quarter[1][1] > 30
    assert s.safety == 0.125 and first_rise(model, x, y, s) is None


def test_the_time_to_target_of_a_trial_on_a_subset_is_the_slower_of_the_subset_and_all_inputs():
    """Four of 40 inputs are fitted exactly by a 4-parameter linear model in the trial, all 40
    are not: the time to target is then the rate of the loss on all inputs over the trial,
    ln(goal)/ln(L_all/L_all(0)) per step (an independent forward pass)."""
    from cosmo_optim import Cosmology
    from cosmo_optim.advice.margin import TrialSet
    from cosmo_optim.advice.trial import run_trial
    from cosmo_optim.losses import per_sample_loss
    from cosmo_optim.ntk import ModelInputs

    model, x, y, _ = noisy_linear_problem()
    ell = per_sample_loss(nn.MSELoss())
    initial = nn.functional.mse_loss(model(x), y).item()
    goal = 0.2
    xs, xa = ModelInputs(x[:4]), ModelInputs(x)  # the samples as the model takes them
    trials = TrialSet(xs, y[:4], goal, xa, y, initial)
    run = run_trial(model, ell, xs, y[:4], Cosmology(0.05, 0.5), 30, goal, np.ones(31))
    own = run.steps_to(goal)
    with torch.no_grad():
        ratio = nn.functional.mse_loss(run.net(x), y).item() / initial
    expected = run.steps * math.log(goal) / math.log(ratio)
    assert expected > own
    assert trials.steps_to(ell, run) == pytest.approx(expected, rel=1e-12)
    whole = TrialSet(xa, y, goal, xa, y, initial)  # the trial set is all inputs: its own time
    assert whole.steps_to(ell, run) == own
