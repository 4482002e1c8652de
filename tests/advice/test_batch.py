"""The mini-batch rule (advice/batch.py): the noise floor of the heavy ball against the exact
stationary variance of its recursion and against simulated mini-batch training, the
finite-population factor against enumeration, monotonicity in the batch size, the noise the
trials measure, and a mini-batch trial against torch SGD on the same batches."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim import Cosmology
from cosmo_optim.advice.batch import (
    BATCH_FACTORS,
    batch_cosmology,
    measured_noise,
    noise_coefficient,
    noise_floor,
    reference_batch,
    slowdown,
)
from cosmo_optim.advice.trial import BATCH_EVAL_EVERY, BatchRun, run_batch_trial
from cosmo_optim.losses import per_sample_loss
from cosmo_optim.ntk import ModelInputs


def stationary_variance(lr, momentum, curvature, noise):
    """Independent reference: the stationary variance of x in the heavy-ball recursion
    x_{n+1} = x_n + β (x_n − x_{n−1}) − η (h x_n + ξ_n), from the discrete Lyapunov equation
    P = A P Aᵀ + Q of its companion form, solved by fixed-point iteration."""
    a = np.array([[1 + momentum - lr * curvature, -momentum], [1.0, 0.0]])
    q = np.array([[lr**2 * noise, 0.0], [0.0, 0.0]])
    p = np.zeros((2, 2))
    for _ in range(200000):
        nxt = a @ p @ a.T + q
        if np.allclose(nxt, p, rtol=1e-13, atol=0):
            break
        p = nxt
    return p[0, 0]


@pytest.mark.parametrize(("lr", "momentum", "curvature"), [(0.01, 0.9, 0.5), (1e-3, 0.0, 2.0),
                                                           (0.002, 0.99, 0.1)])
def test_noise_floor_is_the_heavy_balls_stationary_excess_loss_inside_the_edge(lr, momentum,
                                                                              curvature):
    noise, n, b = 3.0, 100, 10
    c = (n - b) / ((n - 1) * b)
    excess = 0.5 * curvature * stationary_variance(lr, momentum, curvature, c * noise)
    floor = noise_floor(lr / (1 - momentum), noise, b, n)
    # Exact: ε c s (1 + β)/(2(2(1 + β) − η h)) = F · (1 + ηh/(2(1 + β) − ηh)).
    edge = 2 * (1 + momentum)
    assert excess == pytest.approx(floor * edge / (edge - lr * curvature), rel=1e-6)
    assert excess == pytest.approx(floor, rel=2 * lr * curvature / edge)


def test_noise_floor_matches_mini_batch_training_of_a_least_squares_model():
    """Heavy-ball SGD on batches drawn without replacement, started at the least-squares
    solution: its long-run mean excess loss is F = ε c(B) tr Σ/4 with Σ the per-sample gradient
    covariance there (statistical tolerance)."""
    rng = np.random.default_rng(0)
    n, d, batch = 64, 4, 8
    x = rng.normal(size=(n, d)) * np.array([1.0, 0.7, 0.5, 0.3])
    y = x @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]

    def loss(w):
        return float(np.mean((x @ w - y) ** 2))

    grads = 2 * x * (x @ w_star - y)[:, None]  # per-sample gradients of (x·w − y)²
    trace_sigma = float(np.mean(np.sum((grads - grads.mean(0)) ** 2, axis=1)))
    lr, momentum = 0.002, 0.9
    w, velocity, excess = w_star.copy(), np.zeros(d), []
    for step in range(60000):
        idx = rng.choice(n, batch, replace=False)
        g = 2 * x[idx].T @ (x[idx] @ w - y[idx]) / batch
        velocity = momentum * velocity + g
        w = w - lr * velocity
        if step >= 2000:
            excess.append(loss(w) - loss(w_star))
    floor = noise_floor(lr / (1 - momentum), trace_sigma, batch, n)
    assert np.mean(excess) == pytest.approx(floor, rel=0.15)


def test_noise_coefficient_is_the_variance_of_a_batch_mean_drawn_without_replacement():
    values = np.array([0.3, -1.2, 2.0, 0.7, -0.4, 1.1])
    n = len(values)
    population = values.var()
    for b in range(1, n + 1):
        means = [values[list(s)].mean() for s in itertools.combinations(range(n), b)]
        assert np.var(means) == pytest.approx(noise_coefficient(b, n) * population, abs=1e-12)
    assert noise_coefficient(None, n) == 0.0 and noise_coefficient(2 * n, n) == 0.0


def test_batch_cosmology_keeps_beta_and_never_gives_a_smaller_batch_a_larger_step():
    full = Cosmology(0.3, 0.9)
    n, nu = 500, 40.0
    steps = []
    for b in [None, 500, 499, 256, 128, 64, 32, 16, 8, 4, 2, 1]:
        c = batch_cosmology(full, nu, b, n)
        assert c.momentum == full.momentum
        steps.append(c.lr / (1 - c.momentum))
    assert steps[0] == steps[1] == pytest.approx(3.0)
    assert all(b < a for a, b in itertools.pairwise(steps[1:]))
    # The noise floor of the suggested step stays below half the loss (tr Σ = ν L, L = 1).
    for b in (1, 8, 64):
        c = batch_cosmology(full, nu, b, n)
        assert noise_floor(c.lr / (1 - c.momentum), nu, b, n) < 0.5
    assert batch_cosmology(full, 0.0, 8, n) == full
    assert math.isfinite(batch_cosmology(full, 1e12, 1, n).lr)


def test_slowdown_is_the_ratio_of_decay_rates_of_two_exponential_curves():
    # Closed form: e^{−a n} reaches e^{−a T} at n = T; e^{−b n} reaches it at n = aT/b.
    n = np.arange(301)
    full, batch = np.exp(-0.2 * n), np.exp(-0.05 * n)
    assert slowdown(full, batch, 20, 0.25) == pytest.approx(4.0)
    assert slowdown(full, np.exp(-1e-4 * n), 20, 0.25) == 4.0  # never gets there: 1/factor
    assert slowdown(full, full, 20, 1.0) == 1.0


def test_the_measured_noise_gives_the_trials_factor_at_the_reference_batch_and_less_below_it():
    full, n = Cosmology(0.3, 0.9), 500
    ref = reference_batch(n)
    assert ref == 32 and reference_batch(40) == 20 and reference_batch(1) == 1
    for factor in BATCH_FACTORS:
        nu = measured_noise(full, factor, ref, n)
        assert batch_cosmology(full, nu, ref, n).lr == pytest.approx(full.lr * factor, rel=1e-12)
        assert batch_cosmology(full, nu, 8, n).lr <= full.lr * factor
        assert batch_cosmology(full, nu, 128, n).lr >= full.lr * factor
    assert measured_noise(full, 1.0, ref, n) == 0.0


def test_a_batch_runs_time_to_target_is_measured_or_extrapolated_at_its_geometric_rate():
    every = BATCH_EVAL_EVERY
    reached = BatchRun(np.array([1.0, 0.5, 0.2, 0.09]), "reached", 1.0)
    assert reached.steps_to(0.1) == 3 * every
    decay = np.exp(-0.01 * every * np.arange(13))  # e^{−0.01 n}: the goal e^{−3} at n = 300
    ran = BatchRun(decay, "ran", 0.5)
    assert ran.steps_to(math.exp(-3.0)) == pytest.approx(300.0, rel=1e-9)
    noisy = decay.copy()
    noisy[-1] = 5.0  # one noisy reading: the median of the last three ignores it
    assert BatchRun(noisy, "ran", 0.5).steps_to(math.exp(-3.0)) == pytest.approx(300.0, rel=0.1)
    assert BatchRun(decay[:2], "crossed", 1.0).steps_to(0.1) == math.inf
    assert BatchRun(np.array([1.0, 1.2, 1.1, 1.3]), "ran", 1.0).steps_to(0.1) == math.inf


def test_a_batch_trial_is_torch_sgd_on_batches_drawn_without_replacement_from_its_seed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = x @ torch.randn(3, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Cosmology(0.05, 0.8)
    run = run_batch_trial(model, per_sample_loss(nn.MSELoss()), (ModelInputs(x), y),
                          (ModelInputs(x[:20]), y[:20]), plan, 8, 40, 1e-9, seed=7)
    net = nn.Linear(3, 1).double()  # the reference: epochs of a seeded permutation, drop last
    net.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.8)
    perm = torch.Generator().manual_seed(7)
    order, readings = [], [nn.functional.mse_loss(net(x[:20]), y[:20]).item()]
    for step in range(1, 41):
        if len(order) < 8:
            order = torch.randperm(50, generator=perm).tolist()
        idx, order = order[:8], order[8:]
        opt.zero_grad()
        nn.functional.mse_loss(net(x[idx]), y[idx]).backward()
        opt.step()
        if step % BATCH_EVAL_EVERY == 0:
            readings.append(nn.functional.mse_loss(net(x[:20]), y[:20]).item())
    assert run.verdict == "ran" and run.steps == 40
    np.testing.assert_allclose(run.losses, readings, rtol=1e-12)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # a copy trains
