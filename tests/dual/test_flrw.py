"""FLRWDual read-out against hand-computed values and independent iterations (T3–T10)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim import Cosmology, FLRWDual, PolynomialPotentialLoss

D = torch.float64


def dual_of(kernel, f, *, lr=0.01, momentum=0.9, loss=None, **kw):
    loss = loss or PolynomialPotentialLoss(center=1.0, power=2, scale=1.0)
    return FLRWDual.from_kernel(torch.as_tensor(kernel, dtype=D), loss, torch.as_tensor(f, dtype=D),
                                cosmology=Cosmology(lr, momentum), **kw)


def test_background_numbers_by_hand():
    # η = 0.01, β = 0.9: H = 0.1/(3·0.1) = 1/3, Λ = 0.01/0.03 = 1/3, 1/H = 30 steps, 30 steps = 1 e-fold.
    dual = dual_of([[3.0, 1.0], [1.0, 3.0]], [[0.0], [0.0]], step=30)
    assert dual.hubble_rate == pytest.approx(1 / 3)
    assert dual.vacuum_energy == pytest.approx(1 / 3)
    assert dual.hubble_time_steps == pytest.approx(30.0)
    assert dual.efolds == pytest.approx(1.0)
    assert dual.alpha_eff == pytest.approx(2.0)  # λ_1 = 4, N = 2
    assert dual.mean_kernel_entry == pytest.approx(2.0)  # (3 + 1 + 1 + 3)/4


def test_mean_kernel_entry_from_the_top_mode_alone():
    u = torch.tensor([[1.0], [1.0]], dtype=D) / math.sqrt(2)
    dual = FLRWDual.from_eigen(torch.tensor([4.0], dtype=D), u, PolynomialPotentialLoss(), torch.zeros(2, 1, dtype=D),
                               cosmology=Cosmology(0.01, 0.9))
    assert dual.mean_kernel_entry == pytest.approx(2.0)


def test_potential_energy_ratio_and_slow_roll_by_hand():
    # α = 2, ℓ = (φ − 1)², φ̄ = 0, φ̄̇ = 0.5, Λ = 1/3.
    dual = dual_of([[3.0, 1.0], [1.0, 3.0]], [[0.0], [0.0]], velocity=torch.full((2, 1), 0.5, dtype=D))
    lam = 1 / 3
    assert dual.potential(0.0).item() == pytest.approx(2.0 + lam)
    assert dual.potential(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([lam, 8 + lam])
    assert dual.vacuum_domination == pytest.approx((0.5 * 0.25 + 2.0) / lam)
    v = 2.0 + lam
    eps, eta = dual.slow_roll
    assert eps == pytest.approx(0.5 * (2.0 * -2.0 / v) ** 2)
    assert eta == pytest.approx(2.0 * 2.0 / v)
    phi, pot = dual.potential_samples(-1.0, 2.0, num=4)
    np.testing.assert_allclose(phi, [-1, 0, 1, 2])
    np.testing.assert_allclose(pot, 2.0 * (phi - 1) ** 2 + lam)


def test_potential_averages_the_loss_over_targets():
    f, y = torch.zeros(2, 1, dtype=D), torch.tensor([[1.0], [3.0]], dtype=D)
    dual = dual_of(torch.eye(2), f, loss=nn.MSELoss(), targets=y)
    # ℓ̄(φ) = ((φ−1)² + (φ−3)²)/2, α = 1/2.
    assert dual.potential(2.0).item() == pytest.approx(0.5 * 1.0 + dual.vacuum_energy)


def test_masses_and_margins_by_hand():
    dual = dual_of([[3.0, 1.0], [1.0, 3.0]], [[0.0], [0.0]], lr=0.01, momentum=0.5)
    # κ_k = (λ_k/N)·ℓ'' = (4/2)·2, (2/2)·2.
    assert dual.mode_curvatures.tolist() == pytest.approx([4.0, 2.0])
    h = 0.5 / (3 * 0.1)
    assert dual.mass_over_hubble.tolist() == pytest.approx([2.0 / h, math.sqrt(2.0) / h])
    assert dual.stability_margins.tolist() == pytest.approx([0.04 / 3, 0.02 / 3])
    assert dual.relaxation_steps.tolist() == pytest.approx([0.5 / 0.04, 0.5 / 0.02])


def heavy_ball(curvature, lr, momentum, steps=400):
    """Independent scalar iteration x_{n+1} = x_n + β(x_n − x_{n−1}) − η κ x_n from rest."""
    xs, prev, cur = [1.0], 1.0, 1.0
    for _ in range(steps):
        prev, cur = cur, cur + momentum * (cur - prev) - lr * curvature * cur
        xs.append(cur)
    return np.array(xs)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_oscillation_and_stability_thresholds_are_the_exact_discrete_ones(momentum):
    lr = 0.01
    edge = (1 - math.sqrt(momentum)) ** 2 / lr  # T10: oscillates iff η κ > (1 − sqrt β)²
    for kappa, oscillates in [(edge * 0.9, False), (edge * 1.1, True)]:
        signs = np.sign(heavy_ball(kappa, lr, momentum))
        assert bool((signs < 0).any()) == oscillates
        dual = dual_of([[kappa]], [[0.0]], lr=lr, momentum=momentum, loss=PolynomialPotentialLoss(1.0, 2, 0.5))
        assert dual.mode_curvatures.item() == pytest.approx(kappa)
        assert (dual.mode_classes(horizon=1)[0] == "oscillating") == oscillates
    unstable = 2 * (1 + momentum) / lr
    assert abs(heavy_ball(unstable * 1.05, lr, momentum)[-1]) > 1e3
    assert abs(heavy_ball(unstable * 0.95, lr, momentum)[-1]) < 1
    dual = dual_of([[unstable * 1.05]], [[0.0]], lr=lr, momentum=momentum, loss=PolynomialPotentialLoss(1.0, 2, 0.5))
    assert dual.stability_margin == pytest.approx(1.05)
    assert dual.mode_classes()[0] == "unstable"


def test_frozen_overdamped_and_active_modes_follow_the_relaxation_time():
    # ℓ'' = 1, relaxation (1 − β)/(η κ) steps with η = 0.01, β = 0.
    u = torch.eye(3, dtype=D)
    dual = FLRWDual.from_eigen(torch.tensor([3.0, 0.3, 0.003], dtype=D) * 3, u, PolynomialPotentialLoss(0.0, 2, 0.5),
                               torch.zeros(3, 1, dtype=D), cosmology=Cosmology(0.01, 0.0))
    # κ = λ/N = 3, 0.3, 0.003; relaxation 33, 333, 33333 steps; horizon 100, factor 10: the last is frozen.
    assert dual.mode_classes(horizon=100) == ["overdamped", "overdamped", "frozen"]
    assert dual.active_modes(horizon=100) == 2
    assert dual.active_modes(horizon=50, frozen_factor=1) == 1


def test_uniform_overlap_finds_the_mean_field_or_says_none():
    n = 8
    x = torch.linspace(-1, 1, n, dtype=D)
    near_uniform = torch.ones(n, n, dtype=D) + 0.1 * torch.outer(x, x)
    dual = dual_of(near_uniform, torch.zeros(n, 1))
    assert dual.uniform_overlaps[0].item() == pytest.approx(1.0)
    assert dual.mean_field_mode() == 0
    dipole = 5 * torch.outer(x, x) + 0.1 * torch.ones(n, n, dtype=D)
    dual = dual_of(dipole, torch.zeros(n, 1))
    assert dual.uniform_overlaps[0].item() == pytest.approx(0.0, abs=1e-12)
    assert dual.mean_field_mode() == 1
    assert dual.mean_field_mode(threshold=1.01) is None


def test_max_learning_rate_gives_the_tolerated_energy_ratio_and_falls_with_momentum():
    dual = dual_of([[2.0]], [[0.0]], lr=0.01, momentum=0.5)
    eta = dual.max_learning_rate(tolerance=0.1)
    at_edge = dual_of([[2.0]], [[0.0]], lr=eta, momentum=0.5)
    assert at_edge.vacuum_domination == pytest.approx(0.1)
    curve = dual.max_learning_rate(momentum=np.array([0.0, 0.5, 0.9]), tolerance=0.1)
    assert np.all(np.diff(curve) < 0)
    assert curve[0] == pytest.approx(0.1 / (3 * 2.0 * 1.0))


def test_multi_output_uses_the_full_kernel_and_softmax_curvature():
    n, c = 3, 2
    base = torch.tensor([[2.0, 1.0, 0.5], [1.0, 2.0, 1.0], [0.5, 1.0, 2.0]], dtype=D)
    full = torch.einsum("ij,ab->ijab", base, torch.diag(torch.tensor([1.0, 0.5], dtype=D)))
    f, y = torch.zeros(n, c, dtype=D), torch.tensor([0, 1, 0])
    dual = FLRWDual.from_kernel(full, nn.CrossEntropyLoss(), f, targets=y, cosmology=Cosmology(0.01, 0.9))
    assert dual.eigenvectors.shape == (n * c, n * c)
    # The top mode is v_1 ⊗ e_0; at f = 0 the softmax Hessian is I/2 − 1/4, whose e_0 entry is 1/4.
    lam1 = torch.linalg.eigvalsh(base)[-1].item()
    # The mean field (C = 2) rides on the two uniform-most modes v_1 ⊗ e_0 and v_1 ⊗ e_1, of
    # eigenvalues λ_1 and λ_1/2: A = diag(λ_1, λ_1/2)/N and α_eff = tr A / C.
    assert dual.mean_field_modes == [0, 1]
    torch.testing.assert_close(dual.mean_field_coupling, torch.diag(torch.tensor([lam1, lam1 / 2], dtype=D)) / n)
    assert dual.alpha_eff == pytest.approx(0.75 * lam1 / n)
    assert dual.mode_curvatures[0].item() == pytest.approx(lam1 / n * 0.25)
    assert dual.uniform_overlaps[0].item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="one output per input"):
        dual.potential_samples()


def test_bad_input_gives_clear_errors():
    loss = PolynomialPotentialLoss()
    with pytest.raises(ValueError, match=r"Mismatched shapes: kernel \(3, 3\)"):
        dual_of(torch.eye(3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="output='full'"):
        dual_of(torch.eye(2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="Mismatched shapes: eigenvalues"):
        FLRWDual.from_eigen(torch.ones(2, dtype=D), torch.eye(3, dtype=D)[:, :1], loss, torch.zeros(3, 1, dtype=D),
                            cosmology=Cosmology(0.1, 0.0))
    with pytest.raises(ValueError, match="Invalid outputs: it contains NaN"):
        dual_of(torch.eye(2), torch.tensor([[0.0], [math.nan]]))
    with pytest.raises(ValueError, match=r"Invalid lr: -0\.1"):
        dual_of(torch.eye(2), torch.zeros(2, 1), lr=-0.1)
    with pytest.raises(ValueError, match="Invalid cosmology"):
        FLRWDual.from_kernel(torch.eye(2, dtype=D), loss, torch.zeros(2, 1, dtype=D), cosmology=0.1)
    with pytest.raises(ValueError, match="Mismatched shapes: velocity"):
        dual_of(torch.eye(2), torch.zeros(2, 1), velocity=torch.zeros(3))
    with pytest.raises(ValueError, match="Invalid k"):
        dual_of(torch.eye(2), torch.zeros(2, 1), k=5)


def test_cosmology_is_read_from_an_optimiser():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.04, momentum=0.7)
    dual = FLRWDual.from_kernel(torch.eye(1, dtype=D), PolynomialPotentialLoss(), torch.zeros(1, 1, dtype=D), cosmology=opt)
    assert dual.cosmology == Cosmology(0.04, 0.7)


@pytest.mark.parametrize("momentum", [0.25, 0.81])
def test_between_the_complex_band_and_the_edge_a_mode_flips_sign_and_shrinks_slower(momentum):
    """T10: √β per step holds only for (1 − √β)² < ηκ < (1 + √β)²; above, up to the edge
    2(1 + β), the roots of z² − (1 + β − ηκ)z + β are real and negative: the mode flips sign
    every step and shrinks by the larger root's modulus, which exceeds √β."""
    lr, root = 0.01, math.sqrt(momentum)
    lo, hi = (1 + root) ** 2 / lr, 2 * (1 + momentum) / lr
    for kappa in (lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)):
        xs = heavy_ball(kappa, lr, momentum, steps=200)
        b = 1 + momentum - lr * kappa
        largest = abs((b - math.sqrt(b * b - 4 * momentum)) / 2)  # b < 0: the larger modulus
        assert np.all(np.sign(xs[150:-1]) != np.sign(xs[151:]))  # flips every step
        assert abs(xs[-1] / xs[-2]) == pytest.approx(largest, rel=1e-6)
        assert largest > root
        dual = dual_of([[kappa]], [[0.0]], lr=lr, momentum=momentum, loss=PolynomialPotentialLoss(1.0, 2, 0.5))
        assert dual.mode_classes(horizon=1) == ["oscillating"]
    band = (1 + root) ** 2 / lr * 0.9  # inside the complex band: exactly √β per step
    xs = np.abs(heavy_ball(band, lr, momentum, steps=160))
    assert (xs[130:160].max() / xs[30:60].max()) ** 0.01 == pytest.approx(root, rel=0.01)
