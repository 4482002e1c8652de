"""The engine tests' one reference: the per-sample Jacobian by brute force, K = J Jᵀ in float64.

Independent of the engine: the model (a deep copy, in eval mode unless told otherwise) is
called on one sample at a time exactly as a user calls it, and every output component gets
its own ``torch.autograd.grad``; nothing of ``cosmo_optim`` is used. Inputs are a tensor, a
tuple of positional arguments or a dict of keyword arguments; every tensor whose dim 0 has N
rows is split per sample, except the arguments named in ``shared``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

Select = Callable[..., torch.Tensor]


def _per_sample(inputs: Any, shared: Iterable[str | int]) -> tuple[int, Callable[[int], tuple]]:
    """N and a function from i to sample i's (args, kwargs)."""
    if isinstance(inputs, torch.Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, tuple):
        args, kwargs = inputs, {}
    else:
        args, kwargs = (), dict(inputs)
    keep = set(shared)
    first = next(v for k, v in [*enumerate(args), *kwargs.items()]
                 if isinstance(v, torch.Tensor) and v.dim() and k not in keep)
    n = first.shape[0]

    def take(key: str | int, v: Any, i: int) -> Any:
        if key in keep or not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != n:
            return v
        return v[i : i + 1].clone()

    def sample(i: int) -> tuple:
        return (tuple(take(k, v, i) for k, v in enumerate(args)),
                {k: take(k, v, i) for k, v in kwargs.items()})

    return n, sample


def brute_force_jacobian(model: nn.Module, inputs: Any, select: Select | None = None,
                         names: Iterable[str] | None = None, *, shared: Iterable[str | int] = (),
                         train: bool = False, copy_model: bool = True,
                         autocast: torch.dtype | None = None) -> torch.Tensor:
    """J (N, C, P) in float64 on the CPU: ``∂f_ic/∂θ_p`` by one ``autograd.grad`` per sample and output
    component. ``select(out)`` (or ``select(out, i)`` with a sample's position) picks the
    outputs; ``names`` the parameters (default: every trainable one); ``autocast`` runs the
    forward under CPU autocast in that dtype."""
    if copy_model:
        try:
            model = copy.deepcopy(model)
        except RuntimeError:  # old-style weight_norm holds a non-leaf attribute; use it as it is
            pass
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    chosen = None if names is None else set(names)
    ps = [p for n, p in model.named_parameters()
          if p.requires_grad and (chosen is None or n in chosen)]
    n, sample = _per_sample(inputs, shared)
    rows = []
    for i in range(n):
        args, kwargs = sample(i)
        with torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext():
            out = model(*args, **kwargs)
        if select is not None:
            out = select(out, torch.tensor([i])) if _takes_index(select) else select(out)
        out = out.reshape(-1)
        per_c = []
        for o in out:
            gs = torch.autograd.grad(o, ps, retain_graph=True, allow_unused=True)
            per_c.append(torch.cat([torch.zeros(p.numel(), dtype=torch.float64) if g is None
                                    else g.to_dense().reshape(-1).double().cpu()
                                    for g, p in zip(gs, ps, strict=True)]))
        rows.append(torch.stack(per_c))
    for m, flag in flags:
        m.training = flag
    return torch.stack(rows)


def brute_force_ntk(model: nn.Module, inputs: Any, select: Select | None = None,
                    names: Iterable[str] | None = None, *, full: bool = False,
                    **kwargs: Any) -> torch.Tensor:
    """Θ[i, j] = Σ_c ∂f_ic/∂θ · ∂f_jc/∂θ (or Θ[i, j, c, d] with ``full``), float64."""
    J = brute_force_jacobian(model, inputs, select, names, **kwargs)
    return torch.einsum("icp,jdp->ijcd" if full else "icp,jcp->ij", J, J)


def relative_error(K: torch.Tensor, R: torch.Tensor) -> float:
    """max |K − R| / max |R|, in float64 on the CPU."""
    K, R = K.detach().double().cpu(), R.detach().double().cpu()
    return ((K - R).abs().max() / R.abs().max()).item()


def assert_exact(K: torch.Tensor, R: torch.Tensor, rtol: float = 1e-8) -> None:
    err = relative_error(K, R)
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def _takes_index(select: Select) -> bool:
    import inspect

    try:
        params = inspect.signature(select).parameters.values()
    except (TypeError, ValueError):
        return False
    return sum(p.default is p.empty for p in params) == 2
