"""Trajectory predictions of the FLRW dual: continuum ODE and exact discrete map (T2, T5, T7, T10).

From a `FLRWDual` (outputs f, velocity ḟ, kernel modes) the kernel is frozen at its current
value (the NTK / lazy limit) and the outputs are evolved in mode coordinates a = Uᵀ f:

* continuum (T7, T8): `ä + 3H ȧ = −(λ/N) ⊙ Uᵀ ℓ'(U a + r)`, sampled at t_n = n·sqrt(η) (T2);
* discrete (T10): `a_{n+1} = a_n + β (a_n − a_{n−1}) − η (λ/N) ⊙ Uᵀ ℓ'(U a_n + r)`,

where r = f − U Uᵀ f is the part of f outside the kept modes (it has zero kernel, so it
stays put). The modes couple only through ℓ'; for a quadratic loss they decouple exactly.
`predict_mean_field` is the homogeneous equation φ̄̈ + 3Hφ̄̇ + α ℓ̄'(φ̄) = 0 (T5, Eq. 23).

Velocity convention. `FLRWDual.velocity` is the backward difference ḟ_n = (f_n − f_{n−1})/Δt,
which the optimiser's momentum buffer gives exactly in the linear limit (`output_velocity`);
at the start it is zero, as the optimiser's. The default `velocity="backward"` starts the ODE
there. `"forward"` starts it at the map's next forward difference,
`ȧ_0 = β Uᵀḟ_n + Δt·force(a_0)`, which matches the β/(1 − β)-step lag of the map's terminal
velocity in slow roll but overshoots where the first step is large. Chosen on evidence
(docs/duality.md, "The initial velocity"): over 94 held-out single-input networks the
backward start has median end deviation 3.6·10⁻⁵ against 1.3·10⁻⁴, max 1.4·10⁻² against
4.1·10⁻², and is better in 79 of 94.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim._common import preserved
from cosmo_optim.dual.flrw import FLRWDual

__all__ = [
    "INTEGRATORS",
    "Prediction",
    "output_velocity",
    "predict_mean_field",
    "predict_trajectory",
]

Rhs = Callable[[float, np.ndarray], np.ndarray]


def _scipy(method: str) -> Callable[..., np.ndarray]:
    def integrate(rhs: Rhs, y0: np.ndarray, times: np.ndarray, *, rtol: float = 1e-10,
                  atol: float = 1e-12, **_: Any) -> np.ndarray:
        from scipy.integrate import solve_ivp

        sol = solve_ivp(rhs, (times[0], times[-1]), y0, method=method, t_eval=times,
                        rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp({method}) failed: {sol.message}")
        return np.asarray(sol.y.T)

    return integrate


def _rk4(rhs: Rhs, y0: np.ndarray, times: np.ndarray, *, substeps: int = 8,
         **_: Any) -> np.ndarray:
    """Classical RK4 with `substeps` fixed sub-steps between consecutive output times."""
    out = np.empty((len(times), len(y0)))
    out[0] = y = np.asarray(y0, float)
    for i in range(1, len(times)):
        h = (times[i] - times[i - 1]) / substeps
        t = times[i - 1]
        for _s in range(substeps):
            k1 = rhs(t, y)
            k2 = rhs(t + h / 2, y + h / 2 * k1)
            k3 = rhs(t + h / 2, y + h / 2 * k2)
            k4 = rhs(t + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t += h
        out[i] = y
    return out


#: ODE integrators for the continuum prediction: name → fn(rhs, y0, times, **options).
INTEGRATORS: Final[dict[str, Callable[..., np.ndarray]]] = {
    "dop853": _scipy("DOP853"),
    "rk45": _scipy("RK45"),
    "rk4": _rk4,
}


@dataclass(frozen=True)
class Prediction:
    """A predicted trajectory over `steps` optimiser steps (n = 0 … steps).

    `times` are continuum times t_n = n·sqrt(η) (T2); `mean_field` is φ̄_n (steps + 1, C);
    `outputs` (steps + 1, N, C) and `modes` (steps + 1, k), the amplitudes u_kᵀ f_n, are
    None for a mean-field prediction.
    """

    method: str
    steps: np.ndarray
    times: np.ndarray
    mean_field: np.ndarray
    outputs: np.ndarray | None = None
    modes: np.ndarray | None = None


def _check(dual: FLRWDual, steps: int, method: str, integrator: str, velocity: str) -> None:
    if not isinstance(dual, FLRWDual):
        raise ValueError(f"Invalid dual: {type(dual).__name__}; pass a cosmo_optim.FLRWDual.")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r}; it must be a positive integer.")
    if method not in ("continuum", "discrete"):
        raise ValueError(f'Invalid method "{method}". Must be one of ["continuum", "discrete"].')
    if integrator not in INTEGRATORS:
        raise ValueError(f'Invalid integrator "{integrator}". Must be one of {list(INTEGRATORS)}.')
    if velocity not in ("forward", "backward"):
        raise ValueError(f'Invalid velocity "{velocity}". Must be one of ["forward", "backward"].')


def _evolve(force: Callable[[Tensor], Tensor], a0: Tensor, v_back: Tensor, dual: FLRWDual,
            steps: int, method: str, integrator: str, velocity: str,
            options: dict[str, Any]) -> Tensor:
    """Evolve coordinates a under ä + 3Hȧ = force(a) (continuum) or its heavy-ball map (T10)."""
    c = dual.cosmology
    eta, beta, dt = c.lr, c.momentum, c.time_step
    if method == "discrete":
        out = [a0]
        prev, cur = a0 - dt * v_back, a0
        for _ in range(steps):  # a_{n+1} = a_n + β (a_n − a_{n−1}) + η force(a_n)
            nxt = torch.add(cur, cur - prev, alpha=beta).add_(force(cur), alpha=eta)
            prev, cur = cur, nxt
            out.append(cur)
        modes = torch.stack(out)
        if not torch.isfinite(modes).all():  # NaN/inf persist: one check at the end suffices
            raise ValueError(
                f"The discrete prediction diverged (stability margin "
                f"{dual.stability_margin:.3g} ≥ 1 means η κ ≥ 2(1 + β), T10); lower the lr."
            )
        return modes
    a0d = a0.to(torch.float64)
    v0 = v_back.to(torch.float64)
    if velocity == "forward":
        v0 = beta * v0 + dt * force(a0d)
    k, friction = a0d.numel(), c.friction

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(y[:k])
        return np.concatenate([y[k:], -friction * y[k:] + force(a).numpy()])

    times = np.arange(steps + 1) * dt
    y = INTEGRATORS[integrator](rhs, np.concatenate([a0d.numpy(), v0.numpy()]), times, **options)
    return torch.from_numpy(y[:, :k])


def predict_trajectory(
    dual: FLRWDual,
    steps: int,
    *,
    method: str = "continuum",
    integrator: str = "dop853",
    velocity: str = "backward",
    **options: Any,
) -> Prediction:
    """Predict outputs and mode amplitudes over `steps` steps with the kernel frozen (T7, T8, T10).

    `method="continuum"` integrates the ODE of T7 (in float64, with an `INTEGRATORS` entry;
    `options` go to it, e.g. rtol or substeps); `"discrete"` iterates the exact heavy-ball
    map of T10 in the dual's dtype. `velocity` picks the ODE's initial ḟ (module docstring).

    Example:
        >>> from cosmo_optim import Cosmology
        >>> K = torch.eye(2, dtype=torch.float64)
        >>> dual = FLRWDual.from_kernel(K, torch.nn.MSELoss(), torch.zeros(2, 1).double(),
        ...     targets=torch.ones(2, 1).double(), cosmology=Cosmology(lr=0.01, momentum=0))
        >>> p = predict_trajectory(dual, 3, method="discrete")
        >>> p.mean_field[:, 0].round(6).tolist()  # f_{n+1} = f_n − η (1/N)·2(f_n − 1)
        [0.0, 0.01, 0.0199, 0.029701]
    """
    _check(dual, steps, method, integrator, velocity)
    n = dual.num_samples
    u, lam = dual.eigenvectors, dual.eigenvalues
    f0 = dual.outputs.reshape(-1)
    a0 = u.T @ f0
    rest = f0 - u @ a0
    v_back = u.T @ dual.velocity.reshape(-1)  # type: ignore[union-attr]

    gradient = dual.loss.gradient_at(dual.targets)  # ℓ'(f), closed form when there is one
    shape = dual.outputs.shape
    basis: dict[torch.dtype, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def force(a: Tensor) -> Tensor:  # −(λ/N) ⊙ Uᵀ ℓ'(U a + r)
        if a.dtype not in basis:
            ud = u.to(a.dtype)
            basis[a.dtype] = (ud, ud.T, rest.to(a.dtype), -lam.to(a.dtype) / n)
        ud, ut, r, coef = basis[a.dtype]
        f = torch.addmv(r, ud, a).reshape(shape)
        return coef * (ut @ gradient(f).reshape(-1).to(a.dtype))

    modes = _evolve(force, a0, v_back, dual, int(steps), method, integrator, velocity, options)
    outputs = modes @ u.T.to(modes.dtype) + rest.to(modes.dtype)
    outputs = outputs.reshape(steps + 1, n, dual.num_outputs)
    return Prediction(
        method, np.arange(steps + 1), np.arange(steps + 1) * dual.cosmology.time_step,
        outputs.mean(dim=1).numpy(), outputs.numpy(), modes.numpy(),
    )


def predict_mean_field(
    dual: FLRWDual,
    steps: int,
    *,
    alpha: str | float = "top",
    method: str = "continuum",
    integrator: str = "dop853",
    velocity: str = "backward",
    **options: Any,
) -> Prediction:
    """Predict the homogeneous field φ̄ from φ̄̈ + 3Hφ̄̇ + α ℓ̄'(φ̄) = 0 (T5, T7 Eq. 23, T10).

    `alpha` is "top" (α_eff = λ_1/N), "mean_entry" (the mean kernel entry, paper App. B,
    finding F6) or a number. ℓ̄ is the loss averaged over the targets at uniform outputs φ̄.

    Example:
        >>> from cosmo_optim import Cosmology, PolynomialPotentialLoss
        >>> dual = FLRWDual.from_kernel(torch.eye(1).double(), PolynomialPotentialLoss(1.0, 2),
        ...     torch.zeros(1, 1).double(), cosmology=Cosmology(lr=0.01, momentum=0))
        >>> predict_mean_field(dual, 1, method="discrete").mean_field[:, 0].tolist()
        [0.0, 0.02]
    """
    _check(dual, steps, method, integrator, velocity)
    if alpha == "top":
        a_val = dual.alpha_eff
    elif alpha == "mean_entry":
        a_val = dual.mean_kernel_entry
    elif isinstance(alpha, int | float) and not isinstance(alpha, bool):
        a_val = float(alpha)
    else:
        raise ValueError(f'Invalid alpha {alpha!r}. Must be "top", "mean_entry" or a number.')

    def force(phi: Tensor) -> Tensor:
        with torch.enable_grad():
            p = phi.detach().reshape(1, -1).to(dual.outputs.dtype).requires_grad_(True)
            (g,) = torch.autograd.grad(dual.mean_loss(p).sum(), p)
        return -a_val * g.reshape(-1).to(phi.dtype)

    phi = _evolve(force, dual.mean_field, dual.mean_field_velocity, dual, int(steps), method,
                  integrator, velocity, options)
    return Prediction(method, np.arange(steps + 1),
                      np.arange(steps + 1) * dual.cosmology.time_step, phi.numpy())


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
    from torch.func import functional_call, jvp

    dt = float(optimizer.param_groups[0]["lr"]) ** 0.5
    tangent_of: dict[int, Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tangent_of[id(p)] = -float(group["lr"]) * buf / dt
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach() for _, p in model.named_parameters())
    tangents = tuple(tangent_of.get(id(p), torch.zeros_like(p)) for p in model.parameters())

    def f(*ps: Tensor) -> Tensor:
        return functional_call(model, dict(zip(names, ps, strict=True)), (inputs,))

    device = params[0].device if params else inputs.device
    with preserved(model, device):  # BatchNorm statistics, dropout draws: left as they were
        try:
            velocity = jvp(f, params, tangents)[1]
        except NotImplementedError:  # an op without forward AD (e.g. spectral norm's power
            velocity = _jvp_by_double_backward(f, params, tangents)  # iteration in train mode)
    return velocity.detach()


def _jvp_by_double_backward(f: Callable[..., Tensor], params: tuple[Tensor, ...],
                            tangents: tuple[Tensor, ...]) -> Tensor:
    """J v as the gradient in u of (Jᵀu)·v: two reverse passes, for ops without forward AD."""
    with torch.enable_grad():
        leaves = tuple(p.detach().requires_grad_(True) for p in params)
        out = f(*leaves)
        u = torch.zeros_like(out, requires_grad=True)
        pulled = torch.autograd.grad(out, leaves, grad_outputs=u, create_graph=True,
                                     allow_unused=True)
        pairs = [(g, v) for g, v in zip(pulled, tangents, strict=True) if g is not None]
        if not pairs:
            return torch.zeros_like(out)
        (jv,) = torch.autograd.grad([g for g, _ in pairs], u,
                                    grad_outputs=[v for _, v in pairs], allow_unused=True)
    return torch.zeros_like(out) if jv is None else jv
