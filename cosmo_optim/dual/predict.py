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
from torch import Tensor

from cosmo_optim.dual.flrw import FLRWDual

__all__ = ["INTEGRATORS", "Prediction", "predict_mean_field", "predict_trajectory"]

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


def _discrete(dual: FLRWDual, force: Callable[[Tensor], Tensor],
              gradient: Callable[[Tensor], Tensor], a0: Tensor, v_back: Tensor, rest: Tensor,
              steps: int) -> tuple[Tensor, Tensor]:
    """The heavy-ball map of T10 with the kernel frozen: modes (steps + 1, k) and flat outputs
    (steps + 1, N·C), by the cheapest of three equivalent iterations.

    * ℓ' affine with ℓ'' = s·I (MSE, the quadratic potential; `_affine_curvature`): the modes
      decouple, a_{n+1} = a_n + β (a_n − a_{n−1}) + η (F_0 − (sλ/N) ⊙ (a_n − a_0)), F_0 the
      force at the start: elementwise, no matrix product per step;
    * otherwise, with most modes kept (2k ≥ N·C) and U diag(λ/N) Uᵀ already formed for this
      eigenbasis (`_COUPLINGS`) or enough steps to pay for forming it (4 steps ≥ k), in output
      space, f_{n+1} = f_n + β (f_n − f_{n−1}) − η U diag(λ/N) Uᵀ ℓ'(f_n): one product per
      step instead of two (U a and Uᵀ ℓ');
    * otherwise in mode space, as `_evolve`.

    The three agree with the step-by-step mode map to rounding (≤ 1e-10 relative in float64;
    tests/dual/test_predict.py).
    """
    c = dual.cosmology
    eta, beta, dt = c.lr, c.momentum, c.time_step
    u = dual.eigenvectors.to(a0.dtype)
    rate = _affine_curvature(dual, gradient)
    if rate is not None:  # decoupled modes: a_{n+1} − a_0 from the deviations alone
        push = eta * force(a0)
        gain = eta * rate * dual.eigenvalues.to(a0.dtype) / dual.num_samples
        out = [torch.zeros_like(a0)]
        prev, cur = -dt * v_back, out[0]
        for _ in range(steps):
            nxt = torch.add(cur, cur - prev, alpha=beta).add_(push).sub_(gain * cur)
            prev, cur = cur, nxt
            out.append(cur)
        modes = torch.stack(out) + a0
        flat = modes @ u.T + rest.to(a0.dtype)
    elif 2 * u.shape[1] >= u.shape[0] and (4 * steps >= u.shape[1] or _COUPLINGS.has(dual,
                                                                                   a0.dtype)):
        coupling = _COUPLINGS.get(dual, a0.dtype)
        f0 = u @ a0 + rest.to(a0.dtype)
        shape = dual.outputs.shape
        rows = [f0]
        prev, cur = f0 - dt * (u @ v_back), f0
        for _ in range(steps):
            g = gradient(cur.reshape(shape)).reshape(-1).to(a0.dtype)
            nxt = torch.add(cur, cur - prev, alpha=beta).sub_(coupling @ g, alpha=eta)
            prev, cur = cur, nxt
            rows.append(cur)
        flat = torch.stack(rows)
        modes = (flat - rest.to(a0.dtype)) @ u
    else:
        modes = _evolve(force, a0, v_back, dual, steps, "discrete", "rk4", "backward", {})
        return modes, modes @ u.T + rest.to(modes.dtype)
    if not torch.isfinite(flat).all():
        raise ValueError(
            f"The discrete prediction diverged (stability margin {dual.stability_margin:.3g} "
            "≥ 1 means η κ ≥ 2(1 + β), T10); lower the lr."
        )
    return modes, flat


class _Couplings:
    """The last `size` output-space couplings U diag(λ/N) Uᵀ formed, each keyed by the storage,
    layout and version counter of the eigenbasis it came from. Duals made by `replace` share
    their eigenbasis, so a plan search re-forms none; the entries hold that eigenbasis, so no
    other tensor can take its storage while the key is kept, and writing into it in place
    bumps the version (a new key). Couplings over `max_rows` rows are formed but not kept
    (their memory, (N·C)² numbers, is the caller's to hold)."""

    def __init__(self, size: int, max_rows: int) -> None:
        self.size, self.max_rows = size, max_rows
        self.entries: list[tuple[tuple[Any, ...], tuple[Tensor, Tensor], Tensor]] = []

    @staticmethod
    def _key(dual: FLRWDual, dtype: torch.dtype) -> tuple[Any, ...]:
        u, lam = dual.eigenvectors, dual.eigenvalues
        return (u.data_ptr(), u.shape, u.stride(), u.dtype, u.device, u._version,
                lam.data_ptr(), lam.shape, lam._version, dual.num_samples, dtype)

    def has(self, dual: FLRWDual, dtype: torch.dtype) -> bool:
        key = self._key(dual, dtype)
        return any(k == key for k, _, _ in self.entries)

    def get(self, dual: FLRWDual, dtype: torch.dtype) -> Tensor:
        key = self._key(dual, dtype)
        for k, _, coupling in self.entries:
            if k == key:
                return coupling
        u = dual.eigenvectors.to(dtype)
        coupling = (u * (dual.eigenvalues.to(dtype) / dual.num_samples)) @ u.T
        if u.shape[0] > self.max_rows:
            return coupling
        self.entries = [(key, (dual.eigenvectors, dual.eigenvalues), coupling),
                        *self.entries[: self.size - 1]]
        return coupling


#: Output-space couplings of the last two eigenbases (an advice search uses one at a time),
#: up to 2048 rows (32 MiB each in float64).
_COUPLINGS: Final = _Couplings(2, 2048)


def _affine_curvature(dual: FLRWDual, gradient: Callable[[Tensor], Tensor]) -> float | None:
    """s if the loss's ℓ' is affine in the outputs with ℓ'' = s·I for every sample, else None.

    Read from the loss's closed-form ℓ'' (none: None) at the outputs and at a shifted point,
    and checked on the gradient itself: ℓ'(f + 1) − ℓ'(f) = s. MSE and the quadratic
    potential pass; cross-entropy and the quartic potential do not.
    """
    hook = dual.loss.closed_hessian
    if hook is None:
        return None
    f = dual.outputs
    shifted = f + 1.0
    at = hook(dual.targets)
    first, second = at(f), at(shifted)
    if first is None or second is None or first.shape[1:] != (dual.num_outputs,) * 2:
        return None
    s = float(first[0, 0, 0])
    eye = s * torch.eye(dual.num_outputs, dtype=first.dtype, device=first.device)
    if not (torch.equal(first, eye.expand_as(first)) and torch.equal(second, first)):
        return None
    step = gradient(shifted) - gradient(f)
    scale = max(abs(s), float(gradient(f).abs().max()))
    tol = 64 * torch.finfo(f.dtype).eps * scale  # the rounding of ℓ' at f and f + 1
    if not torch.allclose(step, torch.full_like(step, s), rtol=0, atol=tol):
        return None
    return s


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

    if method == "discrete":
        modes, flat = _discrete(dual, force, gradient, a0, v_back, rest, int(steps))
    else:
        modes = _evolve(force, a0, v_back, dual, int(steps), method, integrator, velocity,
                        options)
        flat = modes @ u.T.to(modes.dtype) + rest.to(modes.dtype)
    outputs = flat.reshape(steps + 1, n, dual.num_outputs)
    return Prediction(
        method, np.arange(steps + 1), np.arange(steps + 1) * dual.cosmology.time_step,
        outputs.mean(dim=1).numpy(), outputs.numpy(), modes.numpy(),
    )


def predict_mean_field(
    dual: FLRWDual,
    steps: int,
    *,
    alpha: str | float = "mode",
    method: str = "continuum",
    integrator: str = "dop853",
    velocity: str = "backward",
    **options: Any,
) -> Prediction:
    """Predict the homogeneous field φ̄ from φ̄̈ + 3Hφ̄̇ + A ℓ̄'(φ̄) = 0 (T5, T7, T10).

    `alpha` sets the coupling A: "mode" (the default: the mean-field modes' eigenvalues over
    N, `FLRWDual.mean_field_coupling`, α_eff for one output), "top" (λ_1/N, the paper's Eq. 23,
    right only when the top mode is the uniform one), "mean_entry" (the mean kernel entry,
    paper App. B, finding F6) or a number. ℓ̄ is the loss averaged over the targets at
    uniform outputs φ̄.

    Example:
        >>> from cosmo_optim import Cosmology, PolynomialPotentialLoss
        >>> dual = FLRWDual.from_kernel(torch.eye(1).double(), PolynomialPotentialLoss(1.0, 2),
        ...     torch.zeros(1, 1).double(), cosmology=Cosmology(lr=0.01, momentum=0))
        >>> predict_mean_field(dual, 1, method="discrete").mean_field[:, 0].tolist()
        [0.0, 0.02]
    """
    _check(dual, steps, method, integrator, velocity)
    coupling = _coupling(dual, alpha)

    def force(phi: Tensor) -> Tensor:
        with torch.enable_grad():
            p = phi.detach().reshape(1, -1).to(dual.outputs.dtype).requires_grad_(True)
            (g,) = torch.autograd.grad(dual.mean_loss(p).sum(), p)
        return -(coupling @ g.reshape(-1)).to(phi.dtype)

    phi = _evolve(force, dual.mean_field, dual.mean_field_velocity, dual, int(steps), method,
                  integrator, velocity, options)
    return Prediction(method, np.arange(steps + 1),
                      np.arange(steps + 1) * dual.cosmology.time_step, phi.numpy())


def _coupling(dual: FLRWDual, alpha: str | float) -> Tensor:
    """The (C, C) coupling A of the homogeneous equation for `predict_mean_field`'s `alpha`."""
    eye = torch.eye(dual.num_outputs, dtype=dual.outputs.dtype)
    if alpha == "mode":
        return dual.mean_field_coupling.to(dual.outputs.dtype)
    if alpha == "top":
        return eye * float(dual.eigenvalues[0]) / dual.num_samples
    if alpha == "mean_entry":
        return eye * dual.mean_kernel_entry
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        return eye * float(alpha)
    raise ValueError(
        f'Invalid alpha {alpha!r}. Must be "mode", "top", "mean_entry" or a number.'
    )
