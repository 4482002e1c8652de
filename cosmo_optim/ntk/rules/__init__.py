"""The registry of per-layer structured NTK rules (docs/theory.md T4).

Private to :mod:`cosmo_optim.ntk`. One file per kind of layer call, each one :class:`Rule`
subclass holding everything layer-specific: the call options it models, when it applies, its
cost, its layout, its Gram rows and its per-sample gradients. :data:`RULES` maps the torch
function a layer calls to its rule; the recorder (:mod:`..recorder`) looks calls up here and
writes :class:`Use` records that carry their rule. A new kind of layer is one new file and one
entry in :data:`RULES` (docs/architecture.md shows one).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cosmo_optim.ntk.rules.base import Rule, Use, intact, operand
from cosmo_optim.ntk.rules.batch_norm import BatchNorm
from cosmo_optim.ntk.rules.broadcast import Broadcast
from cosmo_optim.ntk.rules.conv import Conv
from cosmo_optim.ntk.rules.embedding import Embedding
from cosmo_optim.ntk.rules.layer_norm import LayerNorm
from cosmo_optim.ntk.rules.linear import Linear

__all__ = ["RULES", "Rule", "Use", "intact", "operand", "per_sample_grads", "qualifies", "tied"]

_BROADCAST = Broadcast()  # one rule, three torch functions

#: The registry: the torch function a layer calls -> its rule.
RULES: dict[Any, Rule] = {
    F.linear: Linear(), torch.conv1d: Conv(1), torch.conv2d: Conv(2),
    F.embedding: Embedding(), F.layer_norm: LayerNorm(), F.batch_norm: BatchNorm(),
    torch.Tensor.expand: _BROADCAST, torch.Tensor.add: _BROADCAST, torch.add: _BROADCAST,
}


def qualifies(uses: list[Use], n: int) -> bool:
    """True if a structured rule is exact for a parameter with these uses, chunk of n samples:
    every call known, in one role (or a :func:`tied` weight), batch-first, and its captured
    tensors still intact."""
    if not uses or any(u.rule is None for u in uses):
        return False
    if len({(id(u.rule), u.role) for u in uses}) != 1 and not tied(uses):
        return False
    for u in uses:
        assert u.rule is not None
        if not intact(u) or not u.rule.batch_first(u, n) or not u.rule.applies(u):
            return False
    return True


def tied(uses: list[Use]) -> bool:
    """True for a weight used by token-id calls and by dense calls in the same layout (GPT-2's
    ``wte`` and ``lm_head``): the id calls' input axis is the dense calls' output axis, so
    both per-sample gradients live in the same (vocabulary, width) layout and add; its kernel
    is each kind's Gram term plus their cross term (:class:`cosmo_optim.ntk.forms.Tied`)."""
    rules = [u.rule for u in uses]
    if any(r is None or not r.plain_rows for r in rules) or any(u.role != "weight" for u in uses):
        return False
    kinds = {r.ids for r in rules if r is not None}
    return kinds == {True, False} and all(
        u.rule.out_side(u) == (1 if u.rule.ids else 0) for u in uses if u.rule is not None)


def per_sample_grads(uses: list[Use], delta: dict[int, Tensor]) -> Tensor:
    """(n, C, P) per-sample gradients of one parameter from the cotangents ``delta`` of its
    calls' outputs (by id): a layer called several times adds its calls' gradients."""
    G = None
    for u in uses:
        assert u.rule is not None
        g = u.rule.per_sample_grad(u, delta[id(u.out)])
        G = g if G is None else G + g
    assert G is not None
    return G
