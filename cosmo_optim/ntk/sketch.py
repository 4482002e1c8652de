"""Random combinations of the output components: the trace kernel in k passes instead of C.

Private helper of :mod:`cosmo_optim.ntk` (``method="sketch"``). The trace kernel
``Θ = Σ_c J_c J_cᵀ`` (docs/theory.md T4) needs one backward pass per output component, the
least any reverse-mode method needs, which is out of reach for C in the thousands (an image
classifier's classes, a language model's vocabulary). With ``R = √(C/k) Q``, ``Q`` (C × k) k
Haar-random orthonormal columns, ``E[R Rᵀ] = I``, so the exact kernel of the k combined outputs
``g = f R``,

    Θ̂ = Σ_j (J R_j)(J R_j)ᵀ = J R Rᵀ Jᵀ,    E[Θ̂] = J Jᵀ = Θ,

is an unbiased estimate at the cost of one forward and k backward passes, computed by the exact
engine on ``g`` (every rule, plan and proof as for the components). For k ≥ C nothing is
projected and the kernel is exact.

Error model: an entry ``Θ_ij = tr M_ij`` with ``M_ij = J_i J_jᵀ`` (C × C, the products of the
component gradients of samples i and j). For the diagonal, ``M = M_ii`` positive
semi-definite with effective rank ``r = (tr M)² / ‖M‖_F²`` (1 ≤ r ≤ C), the relative variance
of ``Θ̂_ii`` is exactly

    Var[Θ̂_ii] / Θ_ii² = 2 C (C − k) / (k (C − 1)(C + 2)) · (1/r − 1/C)  ≈ 2 (1 − k/C) / (k r),

so the relative standard deviation is at most ``√(2/k)`` (rank one) and falls as the component
gradients spread over more directions; docs/performance.md measures it.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_SKETCH_DIM", "combinations"]

DEFAULT_SKETCH_DIM = 128  # k: backward passes of the sketch; exact for C ≤ k


def combinations(C: int, k: int, seed: int) -> torch.Tensor | None:
    """``R = √(C/k) Q`` (C × k, float64 on the CPU), or None when k ≥ C (no projection):
    ``Q`` has k Haar-random orthonormal columns drawn from a private generator seeded with
    ``seed``, so ``E[R Rᵀ] = I`` and every call with the same seed draws the same R."""
    if k >= C:
        return None
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(C, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)) * math.sqrt(C / k)
