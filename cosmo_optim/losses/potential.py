"""`PolynomialPotentialLoss`: the paper's polynomial loss ℓ(f) = scale·(f − center)^power, a
potential for the field (Eq. 28; docs/theory.md T5).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["PolynomialPotentialLoss"]

_REDUCTIONS = ("mean", "sum", "none")


class PolynomialPotentialLoss(nn.Module):
    """The paper's polynomial loss ℓ(f) = scale·(f − center)^power (Eq. 28; T5).

    With an even `power` it is a potential with its minimum at `center`: power 2 is chaotic
    inflation's m²φ²/2 with m² = 2·scale. The target is ignored (the minimum is the target).
    Used as a training loss it reduces over the batch like torch losses (`reduction` "mean",
    "sum" or "none"); for a model with several outputs the per-sample loss sums over them.
    `per_sample(f)` is ℓ(f_i), shape (N,), whose mean is the "mean" training loss (T4).

    Args:
        center: the minimum c of the potential (output units).
        power: the exponent p, a positive even integer (2 and 4 in the paper).
        scale: the prefactor (loss units per output unit^p), > 0.
        reduction: "mean" (default), "sum" or "none".

    Example:
        >>> import torch
        >>> loss = PolynomialPotentialLoss(center=1.0, power=4, scale=0.5)
        >>> loss(torch.tensor([[0.0], [2.0]])).item()
        0.5
        >>> loss.per_sample(torch.tensor([[0.0], [3.0]])).tolist()
        [0.5, 8.0]
    """

    def __init__(
        self, center: float = 1.0, power: int = 2, scale: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if not (float(power) == int(power) and int(power) >= 2 and int(power) % 2 == 0):
            raise ValueError(
                f"Invalid power: {power!r}; it must be an even integer ≥ 2 so that the loss "
                "is a potential bounded below (the paper uses 2 and 4)."
            )
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"Invalid scale: {scale!r}; it must be a finite number > 0.")
        if not math.isfinite(float(center)):
            raise ValueError(f"Invalid center: {center!r}; it must be a finite number.")
        if reduction not in _REDUCTIONS:
            raise ValueError(f'Invalid reduction "{reduction}". Must be one of {_REDUCTIONS}.')
        self.center, self.power, self.scale = float(center), int(power), float(scale)
        self.reduction = reduction

    def per_sample(self, input: Tensor, target: Tensor | None = None) -> Tensor:
        """ℓ(f_i) = scale·Σ_outputs (f_i − center)^power, shape (N,) (Eq. 28)."""
        values = self.scale * (input - self.center) ** self.power
        return values.reshape(values.shape[0], -1).sum(dim=1) if values.dim() > 1 else values

    def forward(self, input: Tensor, target: Tensor | None = None) -> Tensor:
        values = self.per_sample(input)
        if self.reduction == "mean":
            return values.mean()
        return values.sum() if self.reduction == "sum" else values

    def extra_repr(self) -> str:
        return f"center={self.center}, power={self.power}, scale={self.scale}"
