"""Run-time proofs of what the structured NTK rules assume about a model (docs/theory.md T4).

Private helpers of :mod:`cosmo_optim.ntk`. A rule computes ``∂f_i/∂W = Σ_s δ_isᵀ x_is`` from the
rows a recognised call saw. That is exact only if (1) the call is the parameter's only route to
the outputs, (2) row ``s`` of a chunk belongs to sample ``i`` and to no other, and (3) each
sample's output is the one it would have alone, and the same at every call. Each guard tests
one of these on the data at hand:

* :func:`hidden_route` — the rule's gradient for the one-sample scout must equal autograd's
  gradient of the leaf (routes the recorder cannot see: ``autograd.grad`` or forward-mode AD
  inside ``forward``, calls with torch functions disabled);
* :func:`foreign_rows` — in every chunk a structured rule takes, one extra backward of
  ``Σ_i w_i f_i·r`` (distinct weights ``w``, a Gaussian combination ``r`` of the components)
  must scale row ``s``'s cotangent by its own sample's weight (rows reordered by the model,
  e.g. sorted by length or gathered by expert, or samples mixed downstream of the layer);
* :func:`coupling_error` — every sample's output in the pass must equal its output in a
  random permutation of the batch split into other sub-batches (batch statistics, a cumulative
  sum over the batch, capacities or padding computed over the batch);
* :func:`random_states` and :func:`refuse_randomness` — the forward must compute the same
  function at every call: torch's, NumPy's and Python's global generators must not move, and
  two forwards of the same samples must agree (private generators, LayerDrop, augmentation).

:func:`coupling_tolerance` is the threshold of the last two: half the kernel's own tolerance
for the dtype, relative to each output component's scale over the batch. A coupling that moves
outputs by a relative δ moves the kernel by about δ (measured: a ``0.005·mean`` over the batch
moved a float32 kernel by 4.8e-3), so what passes cannot push the kernel past its tolerance;
batch-size rounding on ResNet-18, a ViT, GPT-2 and BERT in float32 is ≤ 3.5e-6, 14× below it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cosmo_optim.ntk.per_sample import dense, relative_error, tolerance

__all__ = [
    "coupled_error_message", "coupling_error", "coupling_tolerance", "foreign_rows",
    "hidden_route", "lowest_precision", "random_states", "refuse_randomness", "refuse_reentrant",
]


def hidden_route(f1: Tensor, leaves: dict[str, Tensor],
                 rule_rows: Callable[[str], Tensor], tol: float) -> set[str]:
    """Names whose rule gradient for the one sample of ``f1`` (1, C) differs from autograd's
    by more than ``tol`` (relative).

    ``rule_rows(name)`` gives the rule's per-sample gradient (1, C, P). Costs C one-sample
    backward passes.
    """
    names = list(leaves)
    C = f1.shape[1]
    grads = [torch.autograd.grad(f1[0, c], [leaves[n] for n in names], retain_graph=c < C - 1,
                                 allow_unused=True) for c in range(C)] if names else []
    bad = set()
    for k, n in enumerate(names):
        exact = torch.stack([dense(g[k]) if g[k] is not None else torch.zeros_like(leaves[n])
                             for g in grads]).reshape(C, -1)
        if relative_error(rule_rows(n)[0], exact) > tol:
            bad.add(n)
    return bad


def foreign_rows(fr: Tensor, plain: dict[int, Tensor], outs: dict[int, Tensor],
                 tol: float) -> set[int]:
    """Ids of captured outputs whose rows do not each belong to their own sample.

    ``fr`` (n,) is a fixed combination ``Σ_c r_c f_ic`` of the chunk's outputs and ``plain[k]``
    its cotangent ``∂(Σ_i fr_i)/∂y_k`` (from the pass's own backward passes). One backward of
    ``Σ_i w_i fr_i`` with distinct weights must return ``w_s`` times row ``s`` of ``plain`` when
    row ``s`` feeds sample ``s`` alone. Releases the graph of ``fr``.
    """
    n = fr.shape[0]
    ids = [k for k, y in outs.items() if k in plain and y.shape[0] == n]
    if n < 2 or not ids:
        return set()  # one sample owns every row
    w = 1.0 + torch.arange(n, dtype=fr.dtype, device=fr.device) / n  # distinct, positive
    weighted = torch.autograd.grad(fr @ w, [outs[k] for k in ids], allow_unused=True)
    bad = set()
    for k, gw in zip(ids, weighted, strict=True):
        g = plain[k]
        expect = g * w.reshape(n, *([1] * (g.dim() - 1)))
        got = torch.zeros_like(g) if gw is None else gw
        if relative_error(got, expect) > tol:
            bad.add(k)
    return bad


def coupling_tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """Largest relative change of an output allowed between two arrangements of the batch."""
    return tolerance(dtype, device) / 2


def coupling_error(reference: Tensor, other: Tensor) -> float:
    """``max_{i,c} |a_ic − b_ic| / max_i |a_ic|``: the change of each output component,
    relative to that component's finite scale over the batch (components that vanish are
    skipped); equal non-finite values (a model whose outputs overflow) count as agreeing."""
    same = (other == reference) | (other.isnan() & reference.isnan())  # inf == inf too
    diff = (other - reference).abs().masked_fill(same, 0).nan_to_num(nan=float("inf"))
    scale = reference.masked_fill(~reference.isfinite(), 0).abs().amax(0)
    live = scale > 0
    if not bool(live.any()):
        return float(diff.max())
    return float((diff[:, live] / scale[live]).max())


def coupled_error_message(err: float, tol: float, causes: Sequence[str] = ()) -> str:
    return (
        f"Invalid model: a sample's outputs change by {err:.3g} (relative to their scale; "
        f"tolerance {tol:.3g}) when the batch is permuted and split differently (a batch of one "
        "included), so samples are "
        "coupled (batch statistics such as BatchNorm without running statistics, a sum or "
        "cumulative sum over the batch, capacities or padding computed over the batch, outputs "
        "that depend on the batch size or a sample's position) and the per-sample NTK is "
        "undefined. Fix: make each sample's output independent of its batch (eval mode with "
        "running statistics, per-sample normalisation or padding)."
        + _found(causes)
    )


def _found(causes: Sequence[str]) -> str:
    """The causes the model shows, each with its fix, for the end of a message."""
    return "".join(f" Found: {c}." for c in causes)


def random_states(device: torch.device) -> list[Any]:
    """The global generators a forward may draw from: torch's CPU (and ``device``'s, on a GPU),
    NumPy's legacy global and Python's ``random``."""
    states: list[Any] = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    np_state: Any = np.random.get_state()  # noqa: NPY002 - the global state a forward may use
    return [*states, np_state[1].copy(), np_state[2:], random.getstate()]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def refuse_randomness(before: list[Any], device: torch.device, functions: Iterable[object],
                      disagreement: float = 0.0, tol: float = 0.0,
                      causes: Sequence[str] = ()) -> None:
    """Raise if a global generator moved since ``before``, or if two forwards of the same
    samples disagreed by more than ``tol`` (``disagreement``): the forward is random."""
    moved = not all(_same(a, b) for a, b in zip(before, random_states(device), strict=True))
    if not moved and disagreement <= tol:
        return
    names = sorted({name for f in functions if any(
        k in (name := getattr(f, "__name__", "")) for k in _RANDOM_NAMES)})
    seen = f" ({', '.join(names)})" if names else ""
    how = (f"draws random numbers{seen} from a global generator" if moved else
           f"gives outputs that differ by {disagreement:.3g} (relative) between two calls on "
           f"the same samples{seen}")
    raise ValueError(
        f"Invalid model: its forward {how}, so its outputs are a random function and the NTK "
        "is undefined (dropout, "
        "LayerDrop, augmentation drawing from torch, NumPy, Python's random or a private "
        "torch.Generator). Fix: use train_mode=False (model.eval()), pass "
        "training=self.training to functional dropout, or seed the source inside forward so "
        "that every call draws the same numbers." + _found(causes)
    )


_RANDOM_NAMES = ("dropout", "rrelu", "rand", "bernoulli", "normal", "multinomial", "poisson")


def lowest_precision(dtype: torch.dtype, f: Tensor, seen: Iterable[torch.dtype]) -> torch.dtype:
    """The coarsest floating dtype among ``dtype``, the outputs ``f`` and the dtypes ``seen``
    (of the calls that touched a parameter): the precision the forward really computes in
    (bfloat16 weights, autocast around the call or inside forward)."""
    floats = [d for d in (dtype, f.dtype, *seen) if d.is_floating_point]
    return max(floats, key=lambda d: torch.finfo(d).eps)


def refuse_reentrant(f: Tensor, leaves: dict[str, Tensor]) -> None:
    """Refuse a forward whose graph holds a reentrant checkpoint (``torch.utils.checkpoint``
    with ``use_reentrant=True``, Hugging Face's ``gradient_checkpointing_enable()`` with it)
    that hides selected parameters: the checkpointed function runs without a graph, and its
    backward fills ``.grad`` from inside ``.backward()`` but gives ``torch.autograd.grad`` a
    None, which would be an all-zero kernel. Costs one backward of the one-sample ``f``."""
    if not _in_graph(f, "CheckpointFunctionBackward"):
        return
    grads = torch.autograd.grad(f.sum(), list(leaves.values()), retain_graph=True,
                                allow_unused=True)
    hidden = [n for n, g in zip(leaves, grads, strict=True) if g is None]
    if hidden:
        raise ValueError(
            f"Invalid model: parameters {hidden[:4]}{'...' if len(hidden) > 4 else ''} are "
            "inside a reentrant gradient checkpoint (torch.utils.checkpoint with "
            "use_reentrant=True, e.g. gradient_checkpointing_enable() with it): "
            "torch.autograd.grad, which the kernel needs, gets no gradient for them (None, "
            "where .backward() fills .grad), so their kernel would read as zero. Fix: "
            "checkpoint(..., use_reentrant=False), i.e. model.gradient_checkpointing_enable("
            "gradient_checkpointing_kwargs={'use_reentrant': False}), or "
            "model.gradient_checkpointing_disable() for the call, or train_mode=False "
            "(Hugging Face models checkpoint in training mode only)."
        )


def _in_graph(f: Tensor, node_name: str) -> bool:
    """True if the autograd graph of ``f`` holds a node of type ``node_name``."""
    seen, stack = set(), [f.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == node_name:
            return True
        stack.extend(child for child, _ in node.next_functions)
    return False
