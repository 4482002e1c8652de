"""cosmo-optim: momentum gradient descent as a scalar field in a de Sitter universe.

The public API lives here; modules behind it are implementation.
"""

from cosmo_optim.cosmology import Cosmology, PowerLaw
from cosmo_optim.optim import CosmoSGD, cosmology_of

__all__ = [
    "CosmoSGD",
    "Cosmology",
    "PowerLaw",
    "cosmology_of",
]

__version__ = "0.1.0"
