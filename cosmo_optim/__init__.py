"""cosmo-optim: momentum gradient descent as a scalar field in a de Sitter universe.

The public API lives here; modules behind it are implementation.
"""

from cosmo_optim.advice import CosmologyScheduler, Suggestion, suggest_hyperparameters
from cosmo_optim.cosmology import Cosmology, PowerLaw
from cosmo_optim.dual import (
    DualityReport,
    FLRWDual,
    check_duality,
    output_velocity,
    predict_mean_field,
    predict_trajectory,
)
from cosmo_optim.losses import PolynomialPotentialLoss, per_sample_loss
from cosmo_optim.monitor import CosmologyTracker
from cosmo_optim.ntk import MemoryBudgetError, empirical_ntk
from cosmo_optim.optim import CosmoSGD, cosmology_of
from cosmo_optim.spectrum import NTKEigen, kernel_distance, ntk_eigen

__all__ = [
    "CosmoSGD",
    "Cosmology",
    "CosmologyScheduler",
    "CosmologyTracker",
    "DualityReport",
    "FLRWDual",
    "MemoryBudgetError",
    "NTKEigen",
    "PolynomialPotentialLoss",
    "PowerLaw",
    "Suggestion",
    "check_duality",
    "cosmology_of",
    "empirical_ntk",
    "kernel_distance",
    "ntk_eigen",
    "output_velocity",
    "per_sample_loss",
    "predict_mean_field",
    "predict_trajectory",
    "suggest_hyperparameters",
]

__version__ = "0.1.0"
