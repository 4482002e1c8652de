"""Trajectory predictions against independent references: SGD on linear models (whose NTK is
exactly constant) and closed-form damped oscillators (T2, T7, T10)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim import (
    Cosmology,
    FLRWDual,
    PolynomialPotentialLoss,
    check_duality,
    output_velocity,
    predict_mean_field,
    predict_trajectory,
)
from cosmo_optim.dual import INTEGRATORS

D = torch.float64


def brute_force_ntk(model, inputs):
    """Full output-space NTK (N·C, N·C) from per-output autograd rows (test-only reference)."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(inputs).reshape(-1)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, params, retain_graph=True)]) for o in out]
    jac = torch.stack(rows)
    return (jac @ jac.T).detach()


def train(model, loss, inputs, targets, lr, momentum, steps):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    outs = [model(inputs).detach()]
    for _ in range(steps):
        opt.zero_grad()
        loss(model(inputs), targets).backward()
        opt.step()
        outs.append(model(inputs).detach())
    return torch.stack(outs), opt


@pytest.mark.parametrize(
    ("loss", "outputs"),
    [(nn.MSELoss(), 1), (nn.MSELoss(), 3), (nn.CrossEntropyLoss(), 3), (PolynomialPotentialLoss(0.5, 4, 0.3), 1)],
)
def test_discrete_map_reproduces_sgd_on_a_linear_model(loss, outputs):
    torch.manual_seed(0)
    n, steps, lr, beta = 6, 60, 0.05, 0.8
    x = torch.randn(n, 4, dtype=D)
    model = nn.Linear(4, outputs).to(D)
    y = torch.randint(0, outputs, (n,)) if isinstance(loss, nn.CrossEntropyLoss) else torch.randn(n, outputs, dtype=D)
    f0 = model(x).detach()
    dual = FLRWDual.from_kernel(brute_force_ntk(model, x), loss, f0, targets=y, cosmology=Cosmology(lr, beta))
    actual, _ = train(model, loss, x, y, lr, beta, steps)
    predicted = predict_trajectory(dual, steps, method="discrete")
    np.testing.assert_allclose(predicted.outputs, actual.reshape(steps + 1, n, outputs).numpy(), atol=1e-10, rtol=0)


def test_momentum_buffers_give_the_velocity_that_continues_training_exactly():
    torch.manual_seed(1)
    n, lr, beta = 5, 0.05, 0.9
    x, y = torch.randn(n, 3, dtype=D), torch.randn(n, 1, dtype=D)
    model, loss = nn.Linear(3, 1).to(D), nn.MSELoss()
    first, opt = train(model, loss, x, y, lr, beta, 10)
    velocity = output_velocity(model, x, opt)
    # Linear model: the JVP of the last displacement −η b is f_10 − f_9 exactly (T1, T2).
    np.testing.assert_allclose(velocity * math.sqrt(lr), first[-1] - first[-2], atol=1e-12)
    dual = FLRWDual.from_kernel(brute_force_ntk(model, x), loss, first[-1], targets=y,
                                cosmology=opt, velocity=velocity, step=10)
    rest = []
    for _ in range(30):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
        rest.append(model(x).detach())
    predicted = predict_trajectory(dual, 30, method="discrete")
    np.testing.assert_allclose(predicted.outputs[1:], torch.stack(rest).numpy(), atol=1e-10, rtol=0)


def test_velocity_is_zero_before_the_first_step():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert output_velocity(model, torch.randn(4, 2), opt).abs().max().item() == 0.0


def damped_oscillator(x0, v0, gamma, k2, t):
    """Closed form of x'' + γ x' + k² x = 0 (under-, critically and over-damped)."""
    disc = gamma**2 / 4 - k2
    if disc < 0:
        w = math.sqrt(-disc)
        b = (v0 + gamma / 2 * x0) / w
        return np.exp(-gamma * t / 2) * (x0 * np.cos(w * t) + b * np.sin(w * t))
    r1, r2 = -gamma / 2 + math.sqrt(disc), -gamma / 2 - math.sqrt(disc)
    a = (v0 - r2 * x0) / (r1 - r2)
    return a * np.exp(r1 * t) + (x0 - a) * np.exp(r2 * t)


@pytest.mark.parametrize("integrator", sorted(INTEGRATORS))
@pytest.mark.parametrize("alpha", [0.5, 40.0])  # overdamped and oscillating (3H = 5)
def test_continuum_matches_the_closed_form_damped_oscillator(integrator, alpha):
    lr, beta, center, v0 = 0.01, 0.5, 1.0, 0.3
    cosmo = Cosmology(lr, beta)
    dual = FLRWDual.from_kernel(torch.tensor([[alpha]], dtype=D), PolynomialPotentialLoss(center, 2, 1.0),
                                torch.zeros(1, 1, dtype=D), cosmology=cosmo, velocity=torch.full((1, 1), v0, dtype=D))
    pred = predict_trajectory(dual, 200, integrator=integrator, velocity="backward")
    # φ̈ + 3Hφ̇ + α·2(φ − c) = 0 with δ = φ − c.
    exact = center + damped_oscillator(-center, v0, cosmo.friction, 2 * alpha, pred.times)
    atol = 1e-5 if integrator == "rk4" else 1e-7  # fixed step h = sqrt(η)/8
    np.testing.assert_allclose(pred.mean_field[:, 0], exact, atol=atol)
    mean = predict_mean_field(dual, 200, integrator=integrator, velocity="backward")
    np.testing.assert_allclose(mean.mean_field[:, 0], exact, atol=atol)


def test_quadratic_modes_decouple_into_independent_oscillators():
    n = 4
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D, generator=torch.Generator().manual_seed(3)))
    lam = torch.tensor([8.0, 2.0, 0.5, 0.1], dtype=D)
    kernel = q @ torch.diag(lam) @ q.T
    f0 = torch.randn(n, 1, dtype=D, generator=torch.Generator().manual_seed(4))
    y = torch.zeros(n, 1, dtype=D)
    cosmo = Cosmology(0.01, 0.9)
    dual = FLRWDual.from_kernel(kernel, nn.MSELoss(), f0, targets=y, cosmology=cosmo)
    pred = predict_trajectory(dual, 300, velocity="backward")
    a0 = (dual.eigenvectors.T @ f0[:, 0]).numpy()
    for k in range(n):  # ä_k + 3H ȧ_k + (λ_k/N)·2 a_k = 0 (T7, exact for quadratic ℓ)
        exact = damped_oscillator(a0[k], 0.0, cosmo.friction, dual.eigenvalues[k].item() / n * 2, pred.times)
        np.testing.assert_allclose(pred.modes[:, k], exact, atol=1e-8)


def test_forward_velocity_removes_the_start_up_lag_of_the_continuum():
    # A rolling field: ODE started at rest lags the heavy-ball map by one step's motion (T10).
    dual = FLRWDual.from_kernel(torch.tensor([[0.1]], dtype=D), PolynomialPotentialLoss(1.0, 2, 0.5),
                                torch.zeros(1, 1, dtype=D), cosmology=Cosmology(0.01, 0.5))
    discrete = predict_trajectory(dual, 1500, method="discrete").mean_field[:, 0]
    gap = {v: np.abs(predict_trajectory(dual, 1500, velocity=v).mean_field[:, 0] - discrete).max() for v in ("forward", "backward")}
    assert gap["forward"] < 0.3 * gap["backward"]


def test_mean_field_alpha_choices():
    kernel = torch.tensor([[3.0, 1.0], [1.0, 3.0]], dtype=D)
    dual = FLRWDual.from_kernel(kernel, PolynomialPotentialLoss(1.0, 2, 1.0), torch.zeros(2, 1, dtype=D),
                                cosmology=Cosmology(0.01, 0.0))
    top = predict_mean_field(dual, 1, method="discrete").mean_field[1, 0]
    assert top == pytest.approx(0.01 * 2.0 * 2.0)  # η α ℓ'(0) with α = λ_1/N = 2
    assert predict_mean_field(dual, 1, method="discrete", alpha=1.0).mean_field[1, 0] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="Invalid alpha"):
        predict_mean_field(dual, 1, alpha="median")


def test_bad_arguments_give_clear_errors():
    dual = FLRWDual.from_kernel(torch.tensor([[1.0]], dtype=D), PolynomialPotentialLoss(), torch.zeros(1, 1, dtype=D),
                                cosmology=Cosmology(0.01, 0.0))
    with pytest.raises(ValueError, match="Invalid steps: 0"):
        predict_trajectory(dual, 0)
    with pytest.raises(ValueError, match='Invalid method "euler"'):
        predict_trajectory(dual, 3, method="euler")
    with pytest.raises(ValueError, match=r'Invalid integrator "lsoda". Must be one of \['):
        predict_trajectory(dual, 3, integrator="lsoda")
    with pytest.raises(ValueError, match="Invalid dual"):
        predict_trajectory("dual", 3)
    unstable = FLRWDual.from_kernel(torch.tensor([[300.0]], dtype=D), PolynomialPotentialLoss(), torch.zeros(1, 1, dtype=D),
                                    cosmology=Cosmology(0.01, 0.0))
    with pytest.raises(ValueError, match="diverged"):
        predict_trajectory(unstable, 2000, method="discrete")


def test_output_velocity_on_a_model_without_forward_ad_matches_the_jacobian():
    # Spectral norm's power iteration in train mode has no forward-mode AD: the velocity then
    # comes from two reverse passes, checked against J θ̇ with a brute-force Jacobian.
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.spectral_norm(nn.Linear(3, 5)), nn.Tanh(), nn.Linear(5, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.eval()  # one step without moving the power iteration, so the reference sees the same weights
    nn.functional.mse_loss(model(x), torch.ones(4, 1, dtype=torch.float64)).backward()
    opt.step()
    model.train()
    buffers = [b.clone() for b in model.buffers()]
    got = output_velocity(model, x, opt)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    jac = torch.autograd.functional.jacobian(
        lambda *ps: torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,)), params)
    theta_dot = [-0.01 * opt.state[p]["momentum_buffer"] / 0.1 for p in model.parameters()]
    want = sum((j.reshape(4, -1) @ t.reshape(-1)).reshape(4, 1) for j, t in zip(jac, theta_dot, strict=True))
    # The reference ran one train-mode forward (one power iteration), as output_velocity did.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


class _NTKDense(nn.Module):
    """y = (σ_w/sqrt(fan_in)) W x + σ_b b, weights N(0, 1) (NTK parameterisation)."""

    def __init__(self, fan_in: int, fan_out: int, sigma_w: float = 1.5, sigma_b: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(fan_out, dtype=torch.float64))
        self.scale, self.sigma_b = sigma_w / math.sqrt(fan_in), sigma_b

    def forward(self, x):
        return nn.functional.linear(self.scale * x, self.weight) + self.sigma_b * self.bias


def _nearly_odd_erf_network(width=256):
    torch.manual_seed(0)

    class Erf(nn.Module):
        def forward(self, h):
            return torch.erf(h)

    return nn.Sequential(_NTKDense(1, width), Erf(), _NTKDense(width, width), Erf(), _NTKDense(width, 1))


def test_the_mean_field_couples_to_its_own_mode_not_the_top_one():
    """docs/duality.md's erf network: nearly odd around x = 0, so its top mode is a dipole and
    the uniform mode comes second (T7). α_eff is that mode's eigenvalue over N, computed here
    from a brute-force Jacobian, and the homogeneous equation with it follows the trained mean
    field, where λ_1/N misses by a quarter of the motion."""
    from torch.func import functional_call, jacrev

    model = _nearly_odd_erf_network()
    x = torch.linspace(-0.2, 0.2, 16, dtype=torch.float64)[:, None]
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    flat = torch.cat([j.reshape(16, -1) for j in jac.values()], dim=1)
    lam, vec = torch.linalg.eigh(flat @ flat.T)
    overlaps = vec.sum(0).abs() / 4.0  # |u·1|/sqrt(N)
    uniform = int(overlaps.argmax())
    assert uniform != 15 and overlaps[uniform] > 0.99  # not the top mode (eigh is ascending)
    center = float(model(x).detach().mean()) + 1.0
    report = check_duality(model, PolynomialPotentialLoss(center, 2, 0.5), x,
                           cosmology=Cosmology(1e-3, 0.9), steps=600, progress=False)
    dual = report.dual
    assert dual.mean_field_modes == [1]
    assert dual.alpha_eff == pytest.approx(float(lam[uniform]) / 16, rel=1e-6)
    assert float(dual.eigenvalues[0]) / 16 > 2 * dual.alpha_eff
    trained = report.actual_mean_field[:, 0]
    moved = abs(trained[-1] - trained[0])

    def miss(alpha):
        return abs(predict_mean_field(dual, 600, alpha=alpha).mean_field[-1, 0] - trained[-1]) / moved

    assert miss("mode") < 0.01 < 0.1 < miss("top")
    assert miss("mode") == pytest.approx(miss("mean_entry"), abs=0.01)
    # Ω_φ at rest reads α_eff ℓ̄(φ̄)/Λ with the mode's coupling (T6)
    f0 = report.actual_outputs[0, :, 0]
    loss_at_mean = 0.5 * (f0.mean() - center) ** 2
    assert report.background.omega_start == pytest.approx(dual.alpha_eff * loss_at_mean / dual.vacuum_energy)


def step_by_step(dual, steps):
    """T10's map in mode coordinates, one step at a time (the reference for the fast paths):
    a_{n+1} = a_n + β (a_n − a_{n−1}) − η (λ/N) ⊙ Uᵀ ℓ'(U a_n + r)."""
    u, lam, n = dual.eigenvectors, dual.eigenvalues, dual.num_samples
    f0 = dual.outputs.reshape(-1)
    a = u.T @ f0
    rest = f0 - u @ a
    prev = a - dual.cosmology.time_step * (u.T @ dual.velocity.reshape(-1))
    eta, beta = dual.cosmology.lr, dual.cosmology.momentum
    out = [a]
    for _ in range(steps):
        f = (u @ a + rest).reshape(dual.outputs.shape)
        with torch.enable_grad():
            g = f.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(dual.loss.per_sample(g, dual.targets).sum(), g)
        a, prev = a + beta * (a - prev) - eta * lam / n * (u.T @ grad.reshape(-1)), a
        out.append(a)
    modes = torch.stack(out)
    return modes, (modes @ u.T + rest).reshape(steps + 1, *dual.outputs.shape)


@pytest.mark.parametrize(
    ("loss", "outputs", "keep"),
    [(nn.MSELoss(), 3, None), (PolynomialPotentialLoss(0.5, 2, 0.3), 1, None),  # ℓ' affine
     (nn.CrossEntropyLoss(), 4, None), (PolynomialPotentialLoss(0.5, 4, 0.3), 1, None),  # output space
     (nn.CrossEntropyLoss(), 4, 5), (nn.MSELoss(), 3, 4)],  # few modes kept
)
def test_the_fast_discrete_map_equals_the_step_by_step_map(loss, outputs, keep):
    """Every path of `predict_trajectory(method="discrete")` (decoupled modes for an affine ℓ',
    output space, mode space) against the map iterated one step at a time with autograd's ℓ',
    to 1e-10 of the largest value, from a moving start (a velocity) near the edge of stability."""
    gen = torch.Generator().manual_seed(5)
    n, steps = 7, 120
    jac = torch.randn(n * outputs, 40, dtype=D, generator=gen)
    kernel = jac @ jac.T / 40
    f0 = torch.randn(n, outputs, dtype=D, generator=gen)
    if isinstance(loss, nn.CrossEntropyLoss):
        y = torch.randint(0, outputs, (n,), generator=gen)
    elif isinstance(loss, nn.MSELoss):
        y = torch.randn(n, outputs, dtype=D, generator=gen)
    else:
        y = None
    v0 = 0.1 * torch.randn(n, outputs, dtype=D, generator=gen)
    probe = FLRWDual.from_kernel(kernel, loss, f0, targets=y, k=keep, velocity=v0,
                                 cosmology=Cosmology(1.0, 0.0))
    kappa = float(probe.mode_curvatures.max())
    beta = 0.8
    dual = probe.replace(cosmology=Cosmology(1.5 * (1 + beta) / kappa, beta))  # margin 0.75
    modes, outputs_ref = step_by_step(dual, steps)
    fast = predict_trajectory(dual, steps, method="discrete")
    scale = float(outputs_ref.abs().max())
    np.testing.assert_allclose(fast.outputs, outputs_ref.numpy(), rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(fast.modes, modes.numpy(), rtol=0, atol=1e-10 * scale)


def test_repeated_predictions_on_one_eigenbasis_see_every_change_to_it():
    """The output-space coupling U diag(λ/N) Uᵀ is formed once per eigenbasis: a second plan on
    the same basis (`replace`) gives what a fresh dual gives, and eigenvalues changed in place
    are seen (not a stale coupling)."""
    gen = torch.Generator().manual_seed(2)
    jac = torch.randn(18, 30, dtype=D, generator=gen)
    f0 = torch.randn(6, 3, dtype=D, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    dual = FLRWDual.from_kernel(jac @ jac.T / 30, nn.CrossEntropyLoss(), f0, targets=y,
                                cosmology=Cosmology(0.1, 0.5))
    first = predict_trajectory(dual, 40, method="discrete").outputs
    other = dual.replace(cosmology=Cosmology(0.05, 0.9))
    np.testing.assert_allclose(predict_trajectory(other, 40, method="discrete").outputs,
                               step_by_step(other, 40)[1].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(predict_trajectory(dual, 40, method="discrete").outputs, first)
    with torch.no_grad():
        dual.eigenvalues.mul_(2.0)  # the kernel doubled, in place
    np.testing.assert_allclose(predict_trajectory(dual, 40, method="discrete").outputs,
                               step_by_step(dual, 40)[1].numpy(), rtol=0, atol=1e-12)
    assert not np.allclose(predict_trajectory(dual, 40, method="discrete").outputs, first)
