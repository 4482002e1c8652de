"""What every layer rule shares: the record of one call (:class:`Use`) and the :class:`Rule` base.

A dense layer ``y = x Wᵀ + b`` seen at rows ``s`` (sequence positions, conv output pixels,
repeated calls of a shared layer) has per-sample gradients ``∂f_i/∂W = Σ_s δ_isᵀ x_is`` and
``∂f_i/∂b = Σ_s δ_is``, with ``δ = ∂f/∂y`` (docs/theory.md T4). A rule turns the rows a call saw
into those gradients, or into the rows of the Gram form ``Θ_W[i, j] = Σ_{s,t} (x_is · x_jt)
(δ_is · δ_jt)`` (:mod:`cosmo_optim.ntk.forms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["Affine", "Rule", "Use", "intact", "operand"]


@dataclass
class Use:
    """One call touching a watched parameter: its :class:`Rule` (None if no rule models the
    call), the parameter's role in it (``"weight"``, ``"bias"`` or another argument name), the
    call's arguments by name and its output.

    ``versions`` holds the autograd version counters of the captured input and output at the
    call: a rule may read them only while both are unchanged (:func:`intact`).
    """

    rule: Rule | None
    role: str
    args: dict[str, Any] = field(default_factory=dict)
    out: torch.Tensor | None = None
    versions: tuple[int, int] = (0, 0)
    call: int = -1  # index among the forward's recognised calls


def operand(use: Use, dtype: torch.dtype) -> Tensor:
    """The call's input as its kernel used it, in ``dtype`` (the kernel's): under autocast a
    float32 input is rounded to the call's lower-precision output dtype first, as the
    autocast kernel rounds it before the product. Token ids are returned as they are."""
    x = use.args["input"].detach()
    if not x.is_floating_point():
        return x
    y = use.out
    if y is not None and y.is_floating_point() and \
            torch.finfo(y.dtype).eps > torch.finfo(x.dtype).eps:
        x = x.to(y.dtype)
    return x.to(dtype)


def intact(use: Use) -> bool:
    """True if the tensors a rule reads still hold the values the call saw.

    An in-place op after the call (``h.relu_()``, ``h += x``, a forward hook editing its
    output) bumps the version counter of the tensor it writes, and of every view of it.
    """
    x, y = use.args.get("input"), use.out
    if not isinstance(x, Tensor) or y is None:
        return False
    return use.versions == (x._version, y._version)


class Rule:
    """The structured kernel term of the parameters of one kind of layer call: when it
    applies, its cost (rows and widths per sample), its Gram rows and its per-sample
    gradients. Subclasses live one per file beside this one; :data:`RULES` maps the torch
    function a layer calls to its rule."""

    name: ClassVar[str]  # for messages and the plan's description
    arguments: ClassVar[tuple[str, ...]]  # the call's positional argument names
    roles: ClassVar[tuple[str, ...]] = ("weight", "bias")  # the parameters' roles it models
    gram: ClassVar[bool] = True  # a Gram form exists (else per-sample gradients only)
    ids: ClassVar[bool] = False  # inputs are token ids: x_is · x_jt = [id_is == id_jt]
    plain_rows: ClassVar[bool] = False  # Gram rows are the input itself (no unfold)
    channels_first: ClassVar[bool] = False  # a bias's channel is axis 1 of the output

    def models(self, args: dict[str, Any]) -> bool:
        """False for call options the rule does not model (the parameter takes the exact path)."""
        return True

    def applies(self, use: Use) -> bool:
        """Shape conditions beyond a batch-first input and output."""
        return True

    def batch_first(self, use: Use, n: int) -> bool:
        """True if the call's input and output hold the n samples of the chunk on dim 0."""
        x, y = use.args["input"], use.out
        return y is not None and y.dim() > 0 and x.dim() > 0 and y.shape[0] == n \
            and x.shape[0] == n

    def gram_ok(self, use: Use) -> bool:
        return self.gram

    def out_side(self, use: Use) -> int:
        """The axis of the weight (as stored) that indexes the call's outputs: 0 for
        ``F.linear``'s (out, in), 1 for an embedding's (vocabulary, width)."""
        return 0

    def dims(self, use: Use) -> tuple[int, int, int]:
        """(R, d_in, d_out) per sample for the cost model."""
        w, y = use.args["weight"], use.out
        assert y is not None
        return y[0].numel() // y.shape[-1], w.shape[1], w.shape[0]

    def rows(self, use: Use, delta: Tensor) -> tuple[Tensor, Tensor]:
        """Layer inputs ``(n, R, d_in)`` (or ids ``(n, R)``) and cotangents ``(C, n, R, d_out)``
        from ``delta`` = ``∂f_c/∂y`` stacked over components, ``(C, *y.shape)``."""
        raise NotImplementedError(f"{self.name} has no Gram form")

    def weight_grad(self, use: Use, x: Tensor, delta: Tensor) -> Tensor:
        """``∂f_ic/∂W`` of one call, (n, C, P), from its detached input and cotangents."""
        raise NotImplementedError

    def bias_grad(self, use: Use, delta: Tensor) -> Tensor:
        """``Σ_s δ_is`` over every axis but the channel axis: (n, C, channels)."""
        C, n = delta.shape[0], delta.shape[1]
        if self.channels_first:
            return delta.reshape(C, n, delta.shape[2], -1).sum(-1).transpose(0, 1)
        width = use.args["bias"].numel()
        return delta.reshape(C, n, -1, width).sum(2).transpose(0, 1)

    def per_sample_grad(self, use: Use, delta: Tensor) -> Tensor:
        """``∂f_ic/∂θ`` of one call for the parameter in ``use.role``, flattened: (n, C, P).
        Time O(C n R d_in d_out) (a batched matmul; conv: a vmapped weight-gradient kernel)."""
        if use.role == "bias":
            return self.bias_grad(use, delta)
        return self.weight_grad(use, operand(use, delta.dtype), delta)


class Affine(Rule):
    """A per-channel affine map of normalised inputs, ``y = x̂ ⊙ w + b``:
    ``∂f/∂w = Σ_s δ_is ⊙ x̂_is`` (per-sample form only)."""

    gram = False

    def dims(self, use: Use) -> tuple[int, int, int]:
        w = use.args["weight"] if use.args.get("weight") is not None else use.args["bias"]
        assert use.out is not None
        return use.out[0].numel() // w.numel(), w.numel(), w.numel()
