"""The FLRW dual of training: the universe a training state is, what it predicts, and whether
the network follows it (docs/theory.md T3–T10).

The modules, in the order the data meets them:

* :mod:`.flrw` — `FLRWDual`, the frozen state (kernel modes, outputs, loss, η and β), read out
  through :mod:`.background` (H, Λ, the potential, Ω_φ, slow roll; T3–T6, T9) and
  :mod:`.modes` (curvatures, masses, stability, fates, the mean-field mode; T7, T8, T10).
* :mod:`.predict` — trajectories with the kernel frozen: the continuum ODE with its
  `INTEGRATORS` table and the exact discrete map.
* :mod:`.linearised` — the outputs moved through the frozen Jacobian: the velocity from
  momentum buffers (T2) and the linearised outputs the duality is tested against (T12).
* :mod:`.check` — `check_duality`: trains a copy and compares; :mod:`.verdict` measures the
  deviations and gives the reasons; :mod:`.report` holds the result (`DualityReport`,
  `Background`) and :mod:`.figures` draws it.
"""

from cosmo_optim.dual.background import vacuum_domination
from cosmo_optim.dual.check import check_duality
from cosmo_optim.dual.flrw import FLRWDual
from cosmo_optim.dual.linearised import WeightSnapshot, linearised_outputs, output_velocity
from cosmo_optim.dual.modes import MEAN_FIELD_OVERLAP, MODE_CLASSES
from cosmo_optim.dual.predict import (
    INTEGRATORS,
    Prediction,
    predict_mean_field,
    predict_trajectory,
)
from cosmo_optim.dual.report import Background, DualityReport

__all__ = [
    "INTEGRATORS", "MEAN_FIELD_OVERLAP", "MODE_CLASSES", "Background", "DualityReport",
    "FLRWDual", "Prediction", "WeightSnapshot", "check_duality", "linearised_outputs",
    "output_velocity", "predict_mean_field", "predict_trajectory", "vacuum_domination",
]
