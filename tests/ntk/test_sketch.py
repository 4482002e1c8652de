"""method="sketch": random combinations of the output components, an unbiased estimate of the
trace kernel in k backward passes instead of C, checked against brute force.

The estimate is ``Θ̂ = J R Rᵀ Jᵀ`` with ``R = √(C/k) Q`` (cosmo_optim/ntk/sketch.py). Three
independent facts make it right: the engine computes that product exactly (against the
brute-force J and the same R), ``E[R Rᵀ] = I`` (so ``E[Θ̂] = Θ``), and the spread of ``Θ̂_ii``
over seeds is the variance the docstring states. Statistical checks use fixed seeds and a
z = 5 band from the variance of the estimate itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from brute_force import assert_exact, brute_force_jacobian, brute_force_ntk
from test_kernel import build, mlp
from torch import nn

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk.sketch import combinations

Z = 5.0  # width of the statistical bands, in standard deviations


def wide(C: int = 12) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return mlp(nn.Tanh, d_in=3, width=16, d_out=C).double(), torch.randn(6, 3,
                                                                         dtype=torch.float64)


@pytest.mark.parametrize("case", ["gelu", "relu", "transformer", "tied", "cnn"])
def test_at_least_as_many_combinations_as_components_is_the_exact_kernel(case: str) -> None:
    model, x = build(case, torch.float64)
    K = empirical_ntk(model, x, method="sketch", sketch_dim=10_000)
    assert_exact(K, brute_force_ntk(model, x), 1e-8)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_the_engine_computes_the_kernel_of_the_combined_outputs_exactly(k: int) -> None:
    """Θ̂ = (J R)(J R)ᵀ with the brute-force J and the same R (every rule, the plan and the
    proofs run on the k combined outputs)."""
    model, x = wide()
    J = brute_force_jacobian(model, x)  # (N, C, P)
    R = combinations(J.shape[1], k, seed=5)
    assert R is not None and R.shape == (12, k)
    JR = torch.einsum("icp,ck->ikp", J, R)
    for method in ("sketch",):
        K = empirical_ntk(model, x, method=method, sketch_dim=k, sketch_seed=5)
        assert_exact(K, torch.einsum("ikp,jkp->ij", JR, JR), 1e-8)


@pytest.mark.parametrize(("C", "k"), [(12, 1), (12, 5), (40, 8)])
def test_combinations_are_isotropic_on_average(C: int, k: int) -> None:
    """E[R Rᵀ] = I: the mean over 4000 seeds within z = 5 of each entry's own spread."""
    draws = torch.stack([R @ R.T for s in range(4000) if (R := combinations(C, k, s)) is not None])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - torch.eye(C)).abs() <= Z * se + 1e-12).all()
    assert combinations(C, C, 0) is None  # k >= C: nothing projected


def test_the_sketch_is_unbiased_on_a_network() -> None:
    model, x = wide()
    R = brute_force_ntk(model, x)
    S = torch.stack([empirical_ntk(model, x, method="sketch", sketch_dim=3, sketch_seed=s)
                     for s in range(60)])
    se = S.std(0) / math.sqrt(S.shape[0])
    assert ((S.mean(0) - R).abs() <= Z * se + 1e-12 * R.abs().max()).all()


@pytest.mark.parametrize("k", [2, 6])
def test_the_diagonals_spread_is_the_stated_variance(k: int) -> None:
    """Var[Θ̂_ii]/Θ_ii² = 2C(C−k)/(k(C−1)(C+2)) (1/r − 1/C), r = (tr M)²/‖M‖_F², M = J_i J_iᵀ,
    against 3000 draws of R (the sample variance's own standard error sets the band)."""
    model, x = wide()
    J = brute_force_jacobian(model, x)[:2]  # two samples
    C = J.shape[1]
    M = J @ J.transpose(1, 2)  # (2, C, C)
    tr = M.diagonal(dim1=1, dim2=2).sum(-1)
    r = tr**2 / (M**2).sum((1, 2))
    stated = 2 * C * (C - k) / (k * (C - 1) * (C + 2)) * (1 / r - 1 / C)
    draws = torch.stack([torch.einsum("ck,icd,dk->i", R, M, R) / tr
                         for s in range(3000) if (R := combinations(C, k, s)) is not None])
    var = draws.var(0)
    se = var * math.sqrt(2 / (draws.shape[0] - 1)) * 2  # heavier tails than a Gaussian's
    assert ((var - stated).abs() <= Z * se).all(), (var, stated)
    assert (draws.mean(0) - 1).abs().max() <= Z * draws.std(0).max() / math.sqrt(3000)


def test_the_full_kernel_is_refused_with_fewer_combinations_than_components() -> None:
    model, x = wide()
    with pytest.raises(ValueError, match=r"'full' with method='sketch' and sketch_dim=4 < C = "
                                         r"12.*Fix: output='trace'"):
        empirical_ntk(model, x, method="sketch", sketch_dim=4, output="full")
    full = empirical_ntk(model, x, method="sketch", sketch_dim=12, output="full")
    assert_exact(full, brute_force_ntk(model, x, full=True), 1e-8)


def test_seeded_reproducible_and_global_rng_untouched() -> None:
    model, x = wide()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = empirical_ntk(model, x, method="sketch", sketch_dim=4, sketch_seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = empirical_ntk(model, x, method="sketch", sketch_dim=4, sketch_seed=7)
    c = empirical_ntk(model, x, method="sketch", sketch_dim=4, sketch_seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "sketch", "sketch_dim": 0}, "Invalid sketch_dim: 0"),
        ({"method": "sketch", "sketch_dim": 2.5}, "Invalid sketch_dim: 2.5"),
        ({"method": "auto", "sketch_dim": 8}, "only applies to method='sketch'"),
        ({"method": "sketch", "verify": True}, "Invalid verify: True with method='sketch'"),
        ({"method": "sketch", "sketch_dim": 4, "memory_budget": 2000}, "Invalid memory_budget"),
    ],
)
def test_invalid_sketch_arguments(kwargs: dict, match: str) -> None:
    model, x = wide()
    with pytest.raises(ValueError, match=match):
        empirical_ntk(model, x, **kwargs)
