"""Top eigenmodes of the empirical NTK and the kernel distance (docs/theory.md T7).

``Θ = U diag(λ_1 ≥ λ_2 ≥ …) Uᵀ`` on the probe set: the mode amplitudes ``f̃ = Uᵀ f`` obey
``f̃̈_k + 3H f̃̇_k = −(λ_k/N) [Uᵀ ℓ'(f)]_k`` (T7), so the top modes are the mean field and the
lightest perturbations.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from cosmo_optim.ntk import ModelInputs, empirical_ntk

__all__ = [
    "EIGEN_METHODS", "NTKEigen", "fix_signs", "flat_kernel", "kernel_change", "kernel_distance",
    "ntk_eigen",
    "uniform_overlaps", "uniform_projections",
]

EIGEN_METHODS = ("auto", "dense", "lobpcg")
_DENSE_MAX_N = 1024  # "auto" uses dense eigh up to this N, LOBPCG above


class NTKEigen(NamedTuple):
    """Top-k eigenpairs of an NTK: ``eigenvalues`` (k,) descending, ``eigenvectors`` (N, k).

    Columns are orthonormal; each column's sign is fixed so that its entry of largest
    magnitude (the first one on ties) is positive.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


def ntk_eigen(
    model_or_kernel: nn.Module | torch.Tensor,
    inputs: torch.Tensor | tuple[Any, ...] | dict[str, Any] | ModelInputs | None = None,
    *,
    k: int = 8,
    warm_start: NTKEigen | torch.Tensor | None = None,
    method: str = "auto",
    tol: float | None = None,
    **ntk_kwargs: Any,
) -> NTKEigen:
    """The k largest eigenvalues and eigenvectors of the empirical NTK (docs/theory.md T7).

    Args:
        model_or_kernel: a model (the kernel is computed with
            :func:`cosmo_optim.empirical_ntk` on ``inputs``) or a precomputed symmetric
            ``(N, N)`` kernel tensor.
        inputs: probe batch, as the model takes it (a tensor, a tuple of positional
            arguments, a dict of keyword arguments or a
            :class:`cosmo_optim.ntk.ModelInputs`); required with a model, None with a kernel.
        k: number of modes, 1 <= k <= N.
        warm_start: the previous :class:`NTKEigen` (or an ``(N, j)`` block of vectors) when
            called repeatedly during training; LOBPCG then starts from it and converges in a
            few iterations. Ignored by the dense path.
        method: ``"dense"`` (``torch.linalg.eigh``: O(N³) time, O(N²) memory), ``"lobpcg"``
            (``torch.lobpcg`` on the top-k block: O(N² k) per iteration, O(N k) extra memory,
            needs N >= 3k), or ``"auto"`` (dense for N <= 1024 or k > N/3, else LOBPCG).
        tol: LOBPCG residual tolerance (default: torch's, about 1e-7 in float64).
        **ntk_kwargs: passed to :func:`cosmo_optim.empirical_ntk` (e.g. ``params``, ``dtype``);
            its ``output`` must give an ``(N, N)`` kernel.

    Returns:
        :class:`NTKEigen` with eigenvalues descending and sign-fixed eigenvectors.

    >>> K = torch.diag(torch.tensor([3.0, 1.0, 2.0]))
    >>> ntk_eigen(K, k=2).eigenvalues
    tensor([3., 2.])
    """
    if method not in EIGEN_METHODS:
        raise ValueError(f'Invalid method "{method}". Must be one of {list(EIGEN_METHODS)}')
    if isinstance(model_or_kernel, torch.Tensor):
        if inputs is not None or ntk_kwargs:
            raise ValueError(
                "Invalid inputs: a precomputed kernel was given, so inputs and NTK options "
                "must be omitted. Fix: call ntk_eigen(kernel, k=...)."
            )
        K = model_or_kernel
    else:
        if inputs is None:
            raise ValueError("Invalid inputs: None; a model needs a probe batch. Fix: pass inputs.")
        K = empirical_ntk(model_or_kernel, inputs, **ntk_kwargs)
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(
            f"Invalid kernel shape: {tuple(K.shape)}; it must be square (N, N). "
            "Fix: use output='trace', an int or a callable output."
        )
    N = K.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"Invalid k: {k!r}; it must be in [1, N = {N}].")
    if method == "auto":
        method = "dense" if N <= _DENSE_MAX_N or 3 * k > N else "lobpcg"
    if method == "lobpcg" and 3 * k > N:
        raise ValueError(f"Invalid k: {k!r}; LOBPCG needs N >= 3k (N = {N}). Fix: method='dense'.")
    if method == "dense":
        vals, vecs = torch.linalg.eigh(K)
        vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
    else:
        vals, vecs = _lobpcg(K, k, warm_start, tol)
    return NTKEigen(vals, fix_signs(vecs))


def _lobpcg(
    K: torch.Tensor, k: int, warm_start: NTKEigen | torch.Tensor | None, tol: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k block LOBPCG; the initial block is the warm start padded with seeded noise."""
    N = K.shape[0]
    m = min(2 * k, N // 3)  # a slightly larger block converges faster on clustered spectra
    gen = torch.Generator(device="cpu").manual_seed(0)  # never the global RNG
    X = torch.randn(N, m, generator=gen, dtype=K.dtype).to(K.device)
    if warm_start is not None:
        W = warm_start.eigenvectors if isinstance(warm_start, NTKEigen) else warm_start
        if W.dim() != 2 or W.shape[0] != N:
            raise ValueError(
                f"Invalid warm_start shape: {tuple(W.shape)}; it must be (N = {N}, j). "
                "Fix: pass the NTKEigen of the previous call on the same probe set."
            )
        j = min(W.shape[1], m)
        X[:, :j] = W[:, :j].to(K)
        X[:, j:] *= 1e-2 * float(W[:, :j].abs().mean())
    vals, vecs = torch.lobpcg(K, k=m, X=X, largest=True, tol=tol, niter=200)
    order = vals.argsort(descending=True)[:k]
    return vals[order], vecs[:, order]


def fix_signs(vecs: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (N, k) with each column flipped so that its entry of largest magnitude is
    positive (the first on ties): the sign convention of `NTKEigen`."""
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs.gather(0, idx.unsqueeze(0)))
    signs[signs == 0] = 1
    return vecs * signs


def flat_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """The output-space kernel (N, N, C, C) as an (N·C, N·C) matrix, sample-major (T7).

    Row i·C + c is output component c of sample i, as in ``outputs.reshape(-1)``; a 2-D kernel
    is returned as it is.

    >>> flat_kernel(torch.zeros(3, 3, 2, 2)).shape
    torch.Size([6, 6])
    """
    if kernel.dim() != 4:
        return kernel
    n, c = kernel.shape[0], kernel.shape[2]
    return kernel.permute(0, 2, 1, 3).reshape(n * c, n * c)


def kernel_distance(K0: torch.Tensor, K1: torch.Tensor) -> torch.Tensor:
    """Kernel distance ``1 − <K0, K1>_F / (‖K0‖_F ‖K1‖_F)`` (Fort et al. 2020), in [0, 2].

    0 when the kernels are proportional, so it tracks how much the NTK *rotates* during
    training, i.e. the departure from the lazy (NTK) limit assumed in docs/theory.md T4, T7.

    >>> K = torch.eye(3)
    >>> float(kernel_distance(K, 2 * K))
    0.0
    """
    if K0.shape != K1.shape:
        raise ValueError(
            f"Invalid kernel shapes: {tuple(K0.shape)} and {tuple(K1.shape)}; they must match."
        )
    inner = (K0 * K1).sum()  # cosine ≤ 1 but for rounding: the distance is kept ≥ 0
    return (1 - inner / (torch.linalg.norm(K0) * torch.linalg.norm(K1))).clamp(min=0)


def kernel_change(K0: torch.Tensor, K1: torch.Tensor) -> torch.Tensor:
    """Relative kernel change ``‖K1 − K0‖_F / ‖K0‖_F``: how far the NTK moved, in scale and
    direction, from K0 (docs/theory.md T4, T12).

    The lazy (NTK) limit is a kernel that does not move. `kernel_distance` sees only the
    direction and is quadratic in the angle (a change of 14 % in direction is a distance of
    1 %), so the verdicts use this instead.

    >>> K = torch.eye(3)
    >>> round(float(kernel_change(K, 1.1 * K)), 6)
    0.1
    """
    if K0.shape != K1.shape:
        raise ValueError(
            f"Invalid kernel shapes: {tuple(K0.shape)} and {tuple(K1.shape)}; they must match."
        )
    return torch.linalg.norm(K1 - K0) / torch.linalg.norm(K0)


def uniform_projections(eigenvectors: torch.Tensor, num_samples: int) -> torch.Tensor:
    """w_k = (1/sqrt(N)) Σ_i u_k[i, :], (C, k): each mode's components along the C uniform
    directions 1 ⊗ e_c / sqrt(N) of output space (T7). Rows of `eigenvectors` (N·C, k) are
    indexed sample-major.

    >>> u = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5]]).T
    >>> uniform_projections(u, 4).tolist()
    [[1.0, 0.0]]
    """
    sums = eigenvectors.reshape(num_samples, -1, eigenvectors.shape[1]).sum(dim=0)
    return sums / math.sqrt(num_samples)


def uniform_overlaps(eigenvectors: torch.Tensor, num_samples: int) -> torch.Tensor:
    """|u_k·1|/sqrt(N) per mode (k,): how much of mode k is the mean field (T7).

    `eigenvectors` is (N·C, k), rows indexed sample-major; for C outputs each mode's overlap
    is the norm of its projection on the C uniform directions (`uniform_projections`). A mode
    is the mean field when this exceeds `cosmo_optim.dual.MEAN_FIELD_OVERLAP`.

    >>> u = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5]]).T
    >>> uniform_overlaps(u, 4).tolist()
    [1.0, 0.0]
    """
    return uniform_projections(eigenvectors, num_samples).norm(dim=0)
