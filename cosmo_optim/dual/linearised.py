"""The network's outputs moved along a weight direction through its frozen Jacobian (T2, T12).

Both read-outs here are one Jacobian-vector product J v of the outputs on a probe batch, taken
with `torch.func.jvp` (through the composite attention where a fused attention kernel has no
forward-mode rule, and with two reverse passes where nothing else works):

* `output_velocity` — v = θ̇ from the momentum buffers: the field velocity ḟ = J θ̇ (T1, T2).
* `linearised_outputs` — v = θ − θ_ref, the weights' displacement since a `WeightSnapshot`:
  the linearised outputs f(θ_ref) + J(θ_ref)(θ − θ_ref), which the outputs follow exactly
  while the kernel stays frozen at θ_ref, whatever force training applied (T12).
  `linearisation_residual` compares them with the outputs the network actually has.

The model is left as it was: buffers and random states restored, no `.grad` written.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cosmo_optim._common import preserved

__all__ = [
    "WeightSnapshot", "linearisation_residual", "linearised_outputs", "output_velocity",
]

Select = Callable[[Any], Tensor]


@dataclass(frozen=True)
class WeightSnapshot:
    """The trainable weights θ_ref at one step, copied to the host (CPU), by parameter name.

    Holds one copy of the trainable parameters in host memory. Frozen parameters
    (``requires_grad=False``) are not copied, only fingerprinted (shape, sum and norm): the
    linearisation keeps them at their current values, with no displacement, which `changes`
    confirms (a layer unfrozen or edited since would go unseen otherwise).
    """

    step: int
    weights: Mapping[str, Tensor]
    frozen: Mapping[str, tuple[tuple[int, ...], float, float]] = field(default_factory=dict)

    @classmethod
    def take(cls, model: nn.Module, step: int) -> WeightSnapshot:
        """The trainable weights of `model` now (`step` labels them)."""
        named = list(model.named_parameters())
        return cls(step, {name: p.detach().to("cpu", copy=True)
                          for name, p in named if p.requires_grad},
                   {name: _fingerprint(p) for name, p in named if not p.requires_grad})

    def changes(self, model: nn.Module) -> str | None:
        """What changed in `model` since the snapshot besides its trainable weights' values,
        which no linearisation from it can cover; None when nothing did."""
        params = dict(model.named_parameters())
        if set(params) != set(self.weights) | set(self.frozen):
            return "parameters were added or removed"
        if any(params[n].shape != w.shape for n, w in self.weights.items()):
            return "parameters changed shape"
        if any(_fingerprint(params[n]) != f for n, f in self.frozen.items()):
            return "frozen parameters were unfrozen or edited"
        return None


def _fingerprint(p: Tensor) -> tuple[tuple[int, ...], float, float]:
    """Shape, sum and norm, accumulated in float64 (no copy of the parameter)."""
    data = p.detach()
    if not data.is_floating_point():
        data = data.double()
    return (tuple(data.shape), float(data.sum(dtype=torch.float64)),
            float(torch.linalg.vector_norm(data, dtype=torch.float64)))


def linearised_outputs(model: nn.Module, inputs: Any, snapshot: WeightSnapshot,
                       select: Select | None = None) -> tuple[Tensor, Tensor]:
    """(f(θ_ref), J(θ_ref)(θ − θ_ref)) on `inputs`: the outputs at the snapshot's weights and
    their linear change along the displacement to the current weights (T12).

    Both with the model's current buffers and in its current train/eval mode (the caller sets
    it), so that a change of running statistics is not counted as a change of weights.
    `select` picks the outputs from the model's result (a tuple, a dict, ...). Cost: one
    forward-mode pass on the inputs (≈ 2–3 forwards), and two copies of the trainable weights
    on their device while it runs.
    """
    params = dict(model.named_parameters())
    changed = snapshot.changes(model)
    if changed is not None:
        raise ValueError(
            f"Invalid snapshot: since step {snapshot.step} the model's {changed}, so no "
            "linearisation from it covers the model now. Fix: take a new WeightSnapshot of "
            "this model (WeightSnapshot.take(model, step))."
        )
    names = list(snapshot.weights)
    reference = tuple(snapshot.weights[n].to(params[n].device, params[n].dtype) for n in names)
    moved = tuple(params[n].detach() - ref for n, ref in zip(names, reference, strict=True))
    return _jvp(_functional(model, names, inputs, select), reference, moved)


def linearisation_residual(outputs: Tensor, reference_outputs: Tensor,
                           linear_change: Tensor) -> tuple[float, float]:
    """(RMS residual, relative residual) of the outputs f against their linearisation (T12).

    The residual is ρ = f − f(θ_ref) − J(θ_ref)(θ − θ_ref): its RMS over the outputs (output
    units), and ‖ρ‖/‖f − f(θ_ref)‖, dimensionless: 0 when the outputs moved exactly as the
    frozen kernel says (the lazy limit, T4), 1 when the linearisation explains no more of the
    motion than "nothing moves". NaN when the outputs did not move.
    """
    f = outputs.reshape(-1).double()
    moved = f - reference_outputs.reshape(-1).double()
    gap = (moved - linear_change.reshape(-1).double()).norm()
    size = moved.norm()
    return float(gap) / math.sqrt(f.numel()), float(gap / size) if size > 0 else math.nan


def output_velocity(model: nn.Module, inputs: Tensor, optimizer: torch.optim.Optimizer) -> Tensor:
    """ḟ = J θ̇ with θ̇ = −η b/Δt from the momentum buffers b (T1, T2): a Jacobian-vector product.

    After torch's step θ_{n+1} = θ_n − η b_n (T1), the last displacement is −η b_n, so this is
    the backward difference (f_{n+1} − f_n)/Δt of the linearised outputs, in continuum units
    (Δt = sqrt(η) of group 0). Parameters without a buffer (before the first step) move at 0.
    The model's buffers and the random states are left as they were.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        >>> output_velocity(model, torch.ones(3, 2), opt).abs().max().item()
        0.0
    """
    dt = float(optimizer.param_groups[0]["lr"]) ** 0.5
    tangent_of: dict[int, Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tangent_of[id(p)] = -float(group["lr"]) * buf / dt
    named = list(model.named_parameters())
    params = tuple(p.detach() for _, p in named)
    tangents = tuple(tangent_of.get(id(p), torch.zeros_like(p)) for _, p in named)
    device = params[0].device if params else inputs.device
    with preserved(model, device):  # BatchNorm statistics, dropout draws: left as they were
        velocity = _jvp(_functional(model, [n for n, _ in named], inputs), params, tangents)[1]
    return velocity.detach()


def _functional(model: nn.Module, names: list[str], inputs: Any,
                select: Select | None = None) -> Callable[..., Tensor]:
    """The outputs on `inputs` (a tensor, or a `cosmo_optim.ntk.ModelInputs`: the model's
    positional and keyword arguments) as a function of the parameters called `names`; the
    others, and the buffers, stay the module's own."""
    from torch.func import functional_call

    from cosmo_optim.ntk import ModelInputs

    args, kwargs = ((inputs.args, inputs.kwargs) if isinstance(inputs, ModelInputs) else
                    ((inputs,), {}))

    def f(*ps: Tensor) -> Tensor:
        out = functional_call(model, dict(zip(names, ps, strict=True)), args, kwargs,
                              strict=False)
        return out if select is None else select(out)

    return f


def _jvp(f: Callable[..., Tensor], primals: tuple[Tensor, ...],
         tangents: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """(f(primals), J v) in forward mode. An op without a forward-mode rule (PyTorch's fused
    attention kernels) is retried through the composite ("math") attention, which computes the
    same function up to rounding; two reverse passes are the last resort (e.g. spectral norm's
    power iteration in train mode)."""
    for attempt in (contextlib.nullcontext, _math_attention):
        try:
            with attempt(), warnings.catch_warnings():
                warnings.filterwarnings(  # torch's first forward-mode call scripts decompositions
                    "ignore", message=".*torch.jit.script.* is deprecated",
                    category=DeprecationWarning)
                out, jv = _forward_mode(f, primals, tangents)
            return out.detach(), jv.detach()
        except NotImplementedError:
            continue
    with _math_attention():
        out, jv = _jvp_by_double_backward(f, primals, tangents)
    return out.detach(), jv.detach()


def _forward_mode(f: Callable[..., Tensor], primals: tuple[Tensor, ...],
                  tangents: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    from torch.func import jvp

    out, jv = jvp(f, primals, tangents)[:2]  # (outputs, J v); no auxiliary output
    return out, jv


def _math_attention() -> contextlib.AbstractContextManager[Any]:
    """Scaled dot-product attention through its composite implementation, whose ops all have
    forward- and double-backward rules."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _jvp_by_double_backward(f: Callable[..., Tensor], params: tuple[Tensor, ...],
                            tangents: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """(f, J v), J v as the gradient in u of (Jᵀu)·v: two reverse passes."""
    with torch.enable_grad():
        leaves = tuple(p.detach().requires_grad_(True) for p in params)
        out = f(*leaves)
        u = torch.zeros_like(out, requires_grad=True)
        pulled = torch.autograd.grad(out, leaves, grad_outputs=u, create_graph=True,
                                     allow_unused=True)
        pairs = [(g, v) for g, v in zip(pulled, tangents, strict=True) if g is not None]
        if not pairs:
            return out, torch.zeros_like(out)
        (jv,) = torch.autograd.grad([g for g, _ in pairs], u,
                                    grad_outputs=[v for _, v in pairs], allow_unused=True)
    return out, torch.zeros_like(out) if jv is None else jv
