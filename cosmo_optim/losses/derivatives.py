"""`loss_derivatives`: ℓ, ℓ' and ℓ'' of a per-sample loss at the outputs (docs/theory.md T4, T8),
in closed form where the loss has one (:mod:`.closed_forms`, the polynomial potential), else by
autograd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cosmo_optim.losses.per_sample import PerSampleLoss, per_sample_loss

__all__ = ["loss_derivatives"]


def loss_derivatives(
    loss: Any, outputs: Tensor, targets: Tensor | None = None, *, order: int = 2
) -> tuple[Tensor, Tensor, Tensor | None]:
    """ℓ, ℓ' and ℓ'' of a per-sample loss at the outputs (T4, T8): in closed form for the
    built-in losses (MSE, cross-entropy, the polynomial potential), else by autograd.

    Returns `(values, gradient, hessian)` with shapes (N,), (N, C) and (N, C, C) where C is
    the number of outputs per sample (outputs of shape (N,) count as C = 1); `hessian` is
    None for `order=1`. Because the loss is a sum of per-sample terms, one backward pass of
    Σ_i ℓ_i gives every ℓ'(f_i), and C more give every per-sample Hessian.

    Example:
        >>> from cosmo_optim import PolynomialPotentialLoss
        >>> v, g, h = loss_derivatives(PolynomialPotentialLoss(1.0, 4), torch.tensor([0.0, 2.0]))
        >>> g.flatten().tolist(), h.flatten().tolist()
        ([-4.0, 4.0], [12.0, 12.0])
    """
    ell = per_sample_loss(loss)
    if order not in (1, 2):
        raise ValueError(f"Invalid order: {order!r}; must be 1 or 2.")
    n = outputs.shape[0]
    closed = _closed_derivatives(ell, outputs, targets, order)
    if closed is not None:
        return closed
    with torch.enable_grad():
        f = outputs.detach().clone().requires_grad_(True)
        values = ell.per_sample(f, targets)
        (grad,) = torch.autograd.grad(values.sum(), f, create_graph=order == 2)
        grad_flat = grad.reshape(n, -1)
        hessian = None
        if order == 2:
            c = grad_flat.shape[1]
            rows = []
            for j in range(c):
                if not grad_flat.requires_grad:  # ℓ is linear in f
                    rows.append(torch.zeros_like(grad_flat))
                    continue
                (row,) = torch.autograd.grad(
                    grad_flat[:, j].sum(), f, retain_graph=True, allow_unused=True
                )
                rows.append(torch.zeros_like(grad_flat) if row is None else row.reshape(n, c))
            hessian = torch.stack(rows, dim=1).detach()
    return values.detach(), grad_flat.detach(), hessian


def _closed_derivatives(
    ell: PerSampleLoss, outputs: Tensor, targets: Tensor | None, order: int
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """`loss_derivatives` from the loss's closed forms, or None to use autograd."""
    if ell.closed_gradient is None or (order == 2 and ell.closed_hessian is None):
        return None
    f = outputs.detach()
    n = f.shape[0]
    hessian = None
    if order == 2:
        assert ell.closed_hessian is not None
        hessian = ell.closed_hessian(targets)(f)
        if hessian is None:
            return None
    grad = ell.closed_gradient(targets)(f)
    if grad is None:
        return None
    with torch.no_grad():
        values = ell.per_sample(f, targets)
    return values, grad.reshape(n, -1), hessian
