"""method="sketch": an unbiased estimate of the exact kernel, checked against brute force.

Statistical checks use fixed seeds and bounds derived from the estimator's variance (a
z = 5 band around the mean, or the variance of a Gaussian sketch, which bounds the orthogonal
one), not thresholds tuned to the observed numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from brute_force import brute_force_ntk
from test_kernel import CASES, build
from torch import nn

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import sketch as _ntk_sketch

Z = 5.0  # width of the statistical bands, in standard deviations


def sketches(model: nn.Module, x: torch.Tensor, k: int, seeds: range, **kw) -> torch.Tensor:
    return torch.stack([empirical_ntk(model, x, method="sketch", sketch_dim=k, sketch_seed=s,
                                      **kw) for s in seeds])


@pytest.mark.parametrize("case", list(CASES))
def test_sketch_wider_than_every_dimension_is_the_exact_kernel(case: str) -> None:
    """k above every side: no projection, so every path (rows, per-sample, tied weights,
    layers demoted to the jacobian) must give the exact kernel."""
    model, x = build(case, torch.float64)
    K = empirical_ntk(model, x, method="sketch", sketch_dim=10_000)
    R = brute_force_ntk(model, x)
    assert (K - R).abs().max() <= 1e-9 * R.abs().max()


@pytest.mark.parametrize("case", ["tanh", "tied", "twice"])
def test_sketch_is_unbiased(case: str) -> None:
    """The mean of M independent sketches lies within Z standard errors of the exact kernel,
    entry by entry (standard error from the sketches' own spread)."""
    model, x = build(case, torch.float64)
    x = x[:4]
    M = 50
    S = sketches(model, x, 3, range(M))
    R = brute_force_ntk(model, x)
    mean, se = S.mean(0), S.std(0) / math.sqrt(M)
    assert (S.std(0) > 0).any()  # the sketch is random at this k
    assert ((mean - R).abs() <= Z * se + 1e-12 * R.abs().max()).all()


def test_variance_at_most_that_of_a_gaussian_sketch() -> None:
    """Bias-free linear model f = w·x (R = 1, one weight, d0 = 1 not projected): Θ̂_ij =
    x_iᵀ Q Qᵀ x_j. A Gaussian Q with N(0, 1/k) entries has Var = (|x_i|²|x_j|² + (x_i·x_j)²)/k;
    the orthogonal Q is no worse. The sample variance of M sketches is compared with it
    within the chi-square band Z·sqrt(2/M)."""
    torch.manual_seed(0)
    d, k, M = 40, 8, 400
    model = nn.Linear(d, 1, bias=False).double()
    x = torch.randn(3, d, dtype=torch.float64)
    S = sketches(model, x, k, range(M))
    G = x @ x.T
    gauss = (G.diag()[:, None] * G.diag()[None, :] + G**2) / k
    assert (S.var(0) <= gauss * (1 + Z * math.sqrt(2 / M))).all()
    assert ((S.mean(0) - G).abs() <= Z * (gauss / M).sqrt()).all()


def test_adapted_map_keeps_the_given_directions_and_is_isotropic_on_average() -> None:
    """``M = [U | √((d−r)/(k−r)) B]``: the first r columns are U itself, B is orthogonal to U,
    and the mean of ``M Mᵀ`` over draws is the identity (Monte Carlo, Z standard errors)."""
    d, r, k, draws = 10, 2, 5, 4000
    U = torch.linalg.qr(torch.randn(d, r, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64)).Q
    gen = torch.Generator().manual_seed(1)
    Ms = torch.stack([_ntk_sketch._adapted(U, k, gen) for _ in range(draws)])
    assert torch.equal(Ms[:, :, :r], U.expand(draws, d, r))
    assert (U.T @ Ms[:, :, r:]).abs().max() < 1e-12
    MMt = Ms @ Ms.transpose(1, 2)
    se = MMt.std(0) / math.sqrt(draws)
    assert ((MMt.mean(0) - torch.eye(d, dtype=torch.float64)).abs() <= Z * se + 1e-12).all()


def test_gradient_directions_the_pilot_sees_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """f = w·x, 3 samples, d = 40 > k = 12: the pilot (every sample here) finds the gradients
    x_i, and r = k // 4 = 3 kept columns span them, so every seed gives Θ = x xᵀ exactly; with
    no kept column (r = 0) the same sketch is random."""
    torch.manual_seed(0)
    model = nn.Linear(40, 1, bias=False).double()
    x = torch.randn(3, 40, dtype=torch.float64)
    S = sketches(model, x, 12, range(5))
    assert (S - x @ x.T).abs().max() <= 1e-10 * (x @ x.T).abs().max()
    monkeypatch.setattr(_ntk_sketch, "KEPT", 100)
    assert (sketches(model, x, 12, range(5)) - x @ x.T).abs().max() > 1e-3


@pytest.mark.parametrize("case", ["tanh", "tied", "twice"])
def test_adapted_sketch_is_unbiased_for_samples_outside_the_pilot(
        case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-sample pilot (the others never seen when the directions are chosen), k = 4 (one
    kept column per projected side, the exact side chosen on held-out pilot samples): the
    mean of M sketches lies within Z standard errors of the brute-force kernel."""
    monkeypatch.setattr(_ntk_sketch, "PILOT", 2)
    model, x = build(case, torch.float64)
    M = 50
    S = sketches(model, x, 4, range(M))
    R = brute_force_ntk(model, x)
    mean, se = S.mean(0), S.std(0) / math.sqrt(M)
    assert (S.std(0) > 0).any()
    assert ((mean - R).abs() <= Z * se + 1e-12 * R.abs().max()).all()


class DeadBranch(nn.Module):
    """f = w·x + 0·Σ V x: V (20 × 40) has zero gradients, so its pilot directions are arbitrary."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.dead = nn.Linear(40, 1, bias=False), nn.Linear(40, 20, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + 0.0 * self.dead(x).sum(1, keepdim=True)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_zero_gradients_give_a_finite_exact_block(dtype: torch.dtype, rtol: float) -> None:
    """A weight whose gradients vanish on the pilot adds exactly 0 (no NaN from its map)."""
    torch.manual_seed(0)
    model = DeadBranch().to(dtype)
    x = torch.randn(3, 40, dtype=dtype)
    S = sketches(model, x, 12, range(3))
    assert (S - x @ x.T).abs().max() <= rtol * (x @ x.T).abs().max()


def test_error_falls_with_sketch_dim() -> None:
    """Mean squared error over seeds: at 4k it is below the k value (variance ∝ 1/k to 1/k²)."""
    model, x = build("tanh", torch.float64)
    R = brute_force_ntk(model, x)
    mse = [((sketches(model, x, k, range(40)) - R) ** 2).mean() for k in (2, 8)]
    assert mse[1] < mse[0] / 2


def test_seeded_reproducible_and_global_rng_untouched() -> None:
    model, x = build("transformer", torch.float32)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = empirical_ntk(model, x, method="sketch", sketch_dim=4, sketch_seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = empirical_ntk(model, x, method="sketch", sketch_dim=4, sketch_seed=7)
    c = empirical_ntk(model, x, method="sketch", sketch_dim=4, sketch_seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_output_and_int_output() -> None:
    model, x = build("gelu", torch.float64)
    full = empirical_ntk(model, x, method="sketch", sketch_dim=10_000, output="full")
    R = empirical_ntk(model, x, output="full")
    assert torch.allclose(full, R, rtol=1e-9, atol=1e-12)
    one = empirical_ntk(model, x, method="sketch", sketch_dim=10_000, output=0)
    assert torch.allclose(one, empirical_ntk(model, x, output=0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "sketch", "sketch_dim": 0}, "Invalid sketch_dim: 0"),
        ({"method": "sketch", "sketch_dim": 2.5}, "Invalid sketch_dim: 2.5"),
        ({"method": "auto", "sketch_dim": 8}, "only applies to method='sketch'"),
        ({"method": "sketch", "sketch_dim": 64, "memory_budget": 2000}, "Invalid memory_budget"),
    ],
)
def test_invalid_sketch_arguments(kwargs: dict, match: str) -> None:
    model, x = build("tanh", torch.float32)
    with pytest.raises(ValueError, match=match):
        empirical_ntk(model, x, **kwargs)
