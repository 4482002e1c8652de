"""Run-time proofs of what the structured NTK rules assume about a model (docs/theory.md T4).

Private helpers of :mod:`cosmo_optim.ntk`. A rule computes ``∂f_i/∂W = Σ_s δ_isᵀ x_is`` from the
rows a recognised call saw. That is exact only if (1) the call is the parameter's only route to
the outputs, (2) row ``s`` of a chunk belongs to sample ``i`` and to no other, and (3) each
sample's output is the one it would have alone. Each guard tests one of these on the data at
hand, at the cost of a few one-sample backward passes and one small sub-batch:

* :func:`hidden_route` — the rule's gradient for the one-sample probe must equal autograd's
  gradient of the leaf (routes the recorder cannot see: ``autograd.grad`` or forward-mode AD
  inside ``forward``, calls with torch functions disabled);
* :func:`foreign_rows` — on a sub-batch spread over the batch, a backward of ``Σ_i w_i f_i``
  with distinct weights must scale row ``s``'s cotangent by its own sample's weight (rows
  reordered by the model, e.g. sorted by length, or samples mixed downstream of the layer);
* :func:`refuse_coupling` — a sample's output in a chunk must equal its output alone (batch
  statistics, outputs scaled by the batch size);
* :func:`refuse_randomness` — the forward must draw no random numbers (functional dropout,
  RReLU, attention dropout in training mode): the NTK of a random function is undefined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from cosmo_optim.ntk.per_sample import dense, relative_error, tolerance


def hidden_route(f1: Tensor, leaves: dict[str, Tensor],
                 rule_rows: Callable[[str], Tensor]) -> set[str]:
    """Names whose rule gradient for the one sample of ``f1`` (1, C) differs from autograd's.

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
        if relative_error(rule_rows(n)[0], exact) > tolerance(exact.dtype):
            bad.add(n)
    return bad


def foreign_rows(f: Tensor, outs: dict[int, Tensor]) -> set[int]:
    """Ids of captured outputs whose rows do not each belong to their own sample.

    Two backward passes of component 0 to the captured outputs, of ``Σ_i f_i`` and of
    ``Σ_i w_i f_i`` with distinct weights, must differ by ``w_s`` in row ``s`` when row ``s``
    feeds sample ``s`` alone. Rows a model reorders (sorting by length) or mixes (a mean over
    the batch downstream of the layer) fail. Run on a sub-batch: ``f`` is (k, C).
    """
    ys = [y for y in outs.values() if y.requires_grad]
    if not ys or f.shape[0] < 2:
        return set()  # one sample owns every row
    k = f.shape[0]
    w = 1.0 + torch.arange(k, dtype=f.dtype, device=f.device) / k  # distinct, positive
    plain = torch.autograd.grad(f[:, 0].sum(), ys, retain_graph=True, allow_unused=True)
    weighted = torch.autograd.grad(f[:, 0] @ w, ys, allow_unused=True)
    bad = set()
    for y, g, gw in zip(ys, plain, weighted, strict=True):
        if g is None or gw is None or y.shape[0] != k:
            continue  # no cotangent or not batch-first: other checks demote these
        if relative_error(gw, g * w.reshape(k, *([1] * (g.dim() - 1)))) > tolerance(f.dtype):
            bad.add(id(y))
    return bad


def refuse_coupling(alone: Tensor, in_chunk: Tensor) -> None:
    """Raise if sample 0's outputs in a chunk differ from its outputs alone (both (C,))."""
    err = relative_error(in_chunk, alone)
    if err > tolerance(alone.dtype) * 100:  # batched kernels round differently
        raise ValueError(
            f"Invalid model: sample 0's outputs change by {err:.3g} (relative) when other "
            "samples share its batch, so samples are coupled (batch statistics, e.g. BatchNorm "
            "without running statistics, or outputs that depend on the batch size) and the "
            "per-sample NTK is undefined. Fix: make each sample's output independent of the "
            "batch (eval mode with running statistics)."
        )


def rng_states(device: torch.device) -> list[Tensor]:
    """The CPU generator's state, and ``device``'s when it is a GPU."""
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def refuse_randomness(before: list[Tensor], device: torch.device,
                      functions: Iterable[object]) -> None:
    """Raise if the generators moved since ``before``: the forward drew random numbers."""
    if all(torch.equal(a, b) for a, b in zip(before, rng_states(device), strict=True)):
        return
    names = sorted({name for f in functions if any(
        k in (name := getattr(f, "__name__", "")) for k in _RANDOM_NAMES)})
    raise ValueError(
        "Invalid model: its forward draws random numbers"
        + (f" ({', '.join(names)})" if names else "")
        + ", so its outputs are a random function and the NTK is undefined. Fix: use "
        "train_mode=False (eval mode), or pass training=self.training to functional dropout."
    )


_RANDOM_NAMES = ("dropout", "rrelu", "rand", "bernoulli", "normal", "multinomial", "poisson")

