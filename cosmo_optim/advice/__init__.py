"""Physics-informed hyperparameters: momentum SGD's lr and momentum from the NTK, without a grid
search (docs/theory.md T4–T10).

* :mod:`.suggest` — `suggest_hyperparameters`: the plan from the kernel at initialisation at a
  margin measured by trials (:mod:`.margin`, each trial in :mod:`.trial`), its effective step
  lowered for mini-batches (:mod:`.batch`), explained by :mod:`.rationale`.
* :mod:`.scheduler` — `CosmologyScheduler`: re-plans by the same rule as the curvature changes.
* :mod:`.heavy_ball` — the rule both share: the NTK modes on a probe set, the relevant ones,
  Polyak's heavy-ball optimum and the predicted loss curve.
"""

from cosmo_optim.advice.heavy_ball import MAX_PROBE_ROWS
from cosmo_optim.advice.scheduler import CosmologyScheduler
from cosmo_optim.advice.suggest import Suggestion, suggest_hyperparameters

__all__ = ["MAX_PROBE_ROWS", "CosmologyScheduler", "Suggestion", "suggest_hyperparameters"]
