"""Per-sample losses ℓ(f, y) and their output derivatives ℓ', ℓ'' (docs/theory.md T4, T5, T7, T8).

The dual sees a training loss only through its per-sample form: the mean-reduced training loss
is `L = (1/N) Σ_i ℓ(f(x_i), y_i)` (T4), so the force on output i is `ℓ'(f_i)/N` and the mass
of a mode needs the curvature `ℓ''` (T8). `PerSampleLoss` turns a torch loss module (MSE,
cross-entropy, any elementwise `_Loss`), `PolynomialPotentialLoss` (paper Eq. 28) or a user
callable into that form, and `loss_derivatives` differentiates it with autograd: for a model
with C outputs ℓ' is a C-vector and ℓ'' a C×C Hessian per sample. `PerSampleLoss.gradient`
gives ℓ' alone, in closed form for the built-in losses (MSE, cross-entropy, the polynomial
potential) and by autograd otherwise: the trajectory prediction calls it once per step.

The modules: :mod:`.per_sample` (`PerSampleLoss`, `per_sample_loss`), :mod:`.potential`
(`PolynomialPotentialLoss`), :mod:`.closed_forms` (ℓ' and ℓ'' of MSE and cross-entropy) and
:mod:`.derivatives` (`loss_derivatives`).
"""

from cosmo_optim.losses.derivatives import loss_derivatives
from cosmo_optim.losses.per_sample import PerSampleLoss, per_sample_loss
from cosmo_optim.losses.potential import PolynomialPotentialLoss

__all__ = ["PerSampleLoss", "PolynomialPotentialLoss", "loss_derivatives", "per_sample_loss"]
