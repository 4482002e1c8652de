"""ntk_eigen against numpy.linalg.eigh and kernels of known spectrum; kernel_distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cosmo_optim.spectrum as spectrum
from cosmo_optim import NTKEigen, empirical_ntk, kernel_distance, ntk_eigen


def known_spectrum_kernel(N: int, top: torch.Tensor, floor: float, seed: int = 0):
    """K = U diag(top) Uᵀ + floor·I with U (N, k) orthonormal: top eigenvalues top + floor."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(N, top.numel(), generator=g, dtype=torch.float64))
    return (U * top) @ U.T + floor * torch.eye(N, dtype=torch.float64), U


def aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|cosine| between matching columns."""
    return (a * b).sum(0).abs() / (a.norm(dim=0) * b.norm(dim=0))


def test_dense_matches_numpy_eigh_on_an_mlp_kernel() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    x = torch.linspace(-1, 1, 40, dtype=torch.float64).reshape(20, 2)
    res = ntk_eigen(net, x, k=5)
    w, v = np.linalg.eigh(empirical_ntk(net, x).numpy())
    np.testing.assert_allclose(res.eigenvalues.numpy(), w[::-1][:5], rtol=1e-10)
    assert torch.all(aligned(res.eigenvectors, torch.from_numpy(v[:, ::-1][:, :5].copy())) > 1 - 1e-8)
    assert torch.all(res.eigenvalues[:-1] >= res.eigenvalues[1:])
    assert torch.allclose(res.eigenvectors.T @ res.eigenvectors, torch.eye(5, dtype=torch.float64))


def test_lobpcg_on_4096_kernel_of_known_spectrum_matches_without_a_dense_eigh(monkeypatch) -> None:
    top = torch.tensor([400.0, 90.0, 30.0, 12.0, 5.0, 3.0], dtype=torch.float64)
    K, U = known_spectrum_kernel(4096, top, floor=0.5)
    eigh = torch.linalg.eigh  # LOBPCG's own Rayleigh-Ritz steps use it on small blocks

    def small_eigh(A, *args, **kwargs):
        assert A.shape[-1] < 4096, "auto ran a dense O(N³) eigh of the whole kernel"
        return eigh(A, *args, **kwargs)

    with monkeypatch.context() as m:  # auto -> LOBPCG at this size
        m.setattr(torch.linalg, "eigh", small_eigh)
        res = ntk_eigen(K, k=4)
    torch.testing.assert_close(res.eigenvalues, top[:4] + 0.5, rtol=1e-8, atol=0)
    assert torch.all(aligned(res.eigenvectors, U[:, :4]) > 1 - 1e-8)
    dense = ntk_eigen(K[:1500, :1500], k=4, method="dense")
    lob = ntk_eigen(K[:1500, :1500], k=4, method="lobpcg")
    torch.testing.assert_close(lob.eigenvalues, dense.eigenvalues, rtol=1e-8, atol=0)
    torch.testing.assert_close(lob.eigenvectors, dense.eigenvectors, rtol=0, atol=1e-6)


def test_signs_are_deterministic_largest_entry_positive() -> None:
    K, _ = known_spectrum_kernel(60, torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64), 0.1)
    a, b = ntk_eigen(K, k=3), ntk_eigen(K.clone(), k=3, method="lobpcg")
    torch.testing.assert_close(a.eigenvectors, b.eigenvectors, rtol=0, atol=1e-6)
    idx = a.eigenvectors.abs().argmax(0)
    assert torch.all(a.eigenvectors[idx, torch.arange(3)] > 0)


def test_warm_start_seeds_lobpcg_and_gives_the_same_modes(monkeypatch) -> None:
    K, _ = known_spectrum_kernel(300, torch.tensor([9.0, 4.0, 2.0], dtype=torch.float64), 0.2)
    cold = ntk_eigen(K, k=3, method="lobpcg")
    seen = {}
    real = torch.lobpcg

    def spy(A, **kw):
        seen["X"] = kw["X"].clone()
        return real(A, **kw)

    monkeypatch.setattr(spectrum.torch, "lobpcg", spy)
    warm = ntk_eigen(K + 1e-3 * torch.eye(300, dtype=torch.float64), k=3, warm_start=cold,
                     method="lobpcg")
    assert torch.equal(seen["X"][:, :3], cold.eigenvectors)
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues + 1e-3)
    with pytest.raises(ValueError, match=r"Invalid warm_start shape: \(7, 3\)"):
        ntk_eigen(K, k=3, warm_start=torch.zeros(7, 3), method="lobpcg")


def test_rng_state_untouched() -> None:
    K, _ = known_spectrum_kernel(300, torch.tensor([9.0, 4.0], dtype=torch.float64), 0.2)
    state = torch.get_rng_state()
    ntk_eigen(K, k=2, method="lobpcg")
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.eye(4),), {"k": 5}, r"Invalid k: 5; it must be in \[1, N = 4\]"),
        ((torch.eye(4),), {"method": "arpack"}, r'Invalid method "arpack". Must be one of'),
        ((torch.ones(4, 3),), {}, r"Invalid kernel shape: \(4, 3\); it must be square"),
        ((torch.eye(4), torch.eye(4)), {}, r"Invalid inputs: a precomputed kernel was given"),
        ((nn.Linear(2, 1),), {}, r"Invalid inputs: None; a model needs a probe batch"),
        ((torch.eye(6),), {"k": 3, "method": "lobpcg"}, r"Invalid k: 3; LOBPCG needs N >= 3k"),
    ],
)
def test_invalid_arguments(args, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ntk_eigen(*args, **kwargs)


def test_kernel_distance() -> None:
    K = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert float(kernel_distance(K, 5 * K)) == pytest.approx(0.0, abs=1e-7)
    A, B = torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0]))
    assert float(kernel_distance(A, B)) == pytest.approx(1.0)
    assert float(kernel_distance(A, -A)) == pytest.approx(2.0)
    g = torch.Generator().manual_seed(0)  # proportional kernels whose cosine rounds above 1
    ks = [torch.randn(6, 6, generator=g, dtype=torch.float64) for _ in range(200)]
    assert min(float(kernel_distance(k @ k.T, 3 * k @ k.T)) for k in ks) == 0.0
    with pytest.raises(ValueError, match=r"Invalid kernel shapes: \(2, 2\) and \(3, 3\)"):
        kernel_distance(A, torch.eye(3))


def test_ntkeigen_is_a_named_tuple() -> None:
    vals, vecs = ntk_eigen(torch.diag(torch.tensor([1.0, 3.0, 2.0])), k=2)
    assert isinstance(ntk_eigen(torch.eye(2), k=1), NTKEigen)
    assert vals.tolist() == [3.0, 2.0]
    assert vecs.shape == (3, 2)
