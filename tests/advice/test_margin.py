"""The margin from measurement (advice/margin.py, trial.py) and the warnings: a lazy model keeps
the heavy-ball optimum at the edge, a sharpening one is planned for the edge where it ends,
one no margin can hold says so, and a target the model cannot reach is reported."""

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
    assert s.safety == 1.0 and len(s.margin_trials) == 1
    assert s.margin_trials[0][1] in ("held", "reached")
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
