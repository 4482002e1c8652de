"""The monitor's duality read-out on runs as people train them (T7, T10, T12): exact where the
answer is known from outside (a linear model), small on a lazy network, large with a cause on
a feature-learning one, whatever batches training steps on."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cosmo_optim.monitor import CosmologyTracker
from cosmo_optim.monitor.verdict import verdict_of

D = torch.float64


def _train(model, opt, x, y, steps, batch=None, loss=nn.functional.mse_loss, seed=0):
    """`steps` momentum steps on mini-batches of `batch` rows drawn from (x, y), or full batch."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.arange(len(x)) if batch is None else torch.randint(len(x), (batch,), generator=g)
        opt.zero_grad()
        loss(model(x[idx]), y[idx]).backward()
        opt.step()


def _residuals(tracker, tag="duality/relative_residual"):
    return [r.scalars[tag] for r in tracker.history if tag in r.scalars]


def test_a_linear_model_follows_its_dual_exactly_under_mini_batches_of_other_data():
    """f = W x + b has a constant kernel: the outputs equal their linearisation to rounding,
    whatever the batches (T12); the forecast, which assumes training on the probe batch,
    misses, and the verdict calls that mini-batch noise, not a failure."""
    g = torch.Generator().manual_seed(0)
    data_x, data_y = torch.randn(256, 6, generator=g, dtype=D), torch.randn(256, 2, generator=g, dtype=D)
    model = nn.Linear(6, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(data_x[:16], data_y[:16]),
                               every_n_steps=10)
    tracker.attach(opt)
    _train(model, opt, data_x, data_y, 60, batch=8)
    residuals = _residuals(tracker)
    assert len(residuals) == 6 and max(residuals) < 1e-12
    assert min(_residuals(tracker, "duality/forecast_residual")) > 0.05
    verdict = verdict_of(tracker.history[-1].scalars)
    assert verdict.holds and "training is not on the probe batch" in [n.name for n in verdict.notes]


def test_the_forecast_evolves_every_mode_not_only_the_logged_ones():
    """Full batch on the probe batch, a linear model with 3 outputs: the kernel has rank 12 of
    N·C = 24 modes, far more than top_k = 2, and the forecast (the exact discrete map, T10) is
    still exact: it evolves all of them."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=g, dtype=D), torch.randn(8, 3, generator=g, dtype=D)
    model = nn.Linear(3, 3).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.8)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2, every_n_steps=5)
    tracker.attach(opt)
    _train(model, opt, x, y, 15)
    assert max(_residuals(tracker, "duality/forecast_residual")) < 1e-10
    assert max(_residuals(tracker)) < 1e-12


def test_alpha_eff_is_the_mean_of_the_c_mean_field_modes_eigenvalues():
    """C = 2 outputs on inputs around a common centre: the mean field rides on the 2 modes most
    aligned with the uniform directions; α_eff is their mean eigenvalue over N, computed here
    from the kernel by hand."""
    g = torch.Generator().manual_seed(2)
    x = 2.0 + 0.3 * torch.randn(6, 3, generator=g, dtype=D)
    model = nn.Linear(3, 2).double()
    s = CosmologyTracker(model, probe_batch=x, top_k=2).read(0)
    kernel = torch.kron(x @ x.T + 1.0, torch.eye(2, dtype=D))  # (N·C)², sample-major (T4)
    lam, vec = torch.linalg.eigh(kernel)
    overlaps = vec.reshape(6, 2, -1).sum(0).norm(dim=0) / 6 ** 0.5
    mean_field = overlaps.argsort(descending=True)[:2]
    assert overlaps[mean_field].min() > 0.99
    assert s["cosmology/alpha_eff"] == pytest.approx(float(lam[mean_field].mean()) / 6, rel=1e-10)


def test_without_a_mean_field_mode_alpha_eff_is_the_mean_kernel_entry():
    """Standard-normal inputs, no bias: no mode is uniform (best overlap 0.60 < 1/√2, T7), so
    the mean field is not a mode and α_eff is the mean kernel entry (1/N²) Σ_ij Θ_ij, the exact
    coupling of a uniform state, by hand."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, dtype=D)
    model = nn.Linear(5, 1, bias=False).double()
    s = CosmologyTracker(model, probe_batch=x, top_k=2).read(0)
    kernel = x @ x.T
    assert s["ntk/mean_field_overlap"] == pytest.approx(0.598, abs=1e-3)
    assert s["cosmology/alpha_eff"] == pytest.approx(float(kernel.mean()), abs=1e-12)


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)


@pytest.mark.slow
def test_a_lazy_run_holds_and_a_feature_learning_one_fails_naming_the_kernel():
    """Digits, MSE to one-hot, mini-batches of 32 from the whole set, a reading every 10 steps:
    issue #28's lazy network (tanh 64-4096-10, lr 1e-2) stays within 1 %, a narrow one at a
    large lr moves its kernel and is ≥ 5× off, and its verdict names the kernel."""
    x, y = _digits()

    def one_hot_mse(out, labels):  # per sample; the mean is the training loss
        return (out - nn.functional.one_hot(labels, 10).to(out)).pow(2).mean(dim=1)

    def run(hidden, lr):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ω_φ, size notes
            tracker = CosmologyTracker(model, one_hot_mse, probe_batch=(x[:16], y[:16]),
                                       every_n_steps=10)
            tracker.attach(opt)
            _train(model, opt, x, y, 60, batch=32, loss=lambda o, t: one_hot_mse(o, t).mean())
        return tracker

    lazy, rich = run(4096, 1e-2), run(32, 0.5)
    assert max(_residuals(lazy)) < 0.01
    assert min(_residuals(rich)) > 5 * max(_residuals(lazy))
    assert verdict_of(lazy.history[-1].scalars).holds
    failed = [verdict_of(r.scalars, interval=10) for r in list(rich.history)[1:]]
    assert any(v.holds is False for v in failed)
    assert all(v.causes[0].name == "kernel moved" for v in failed if v.holds is False)
