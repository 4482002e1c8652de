"""The empirical neural tangent kernel engine (docs/theory.md T4, T7).

Public entry: :func:`empirical_ntk` (:mod:`.kernel`), on a probe batch as the model takes it,
:class:`ModelInputs` (:mod:`.inputs`: a tensor, positional or keyword arguments, samples
along a batch dimension). The modules below it, in the order a request meets them:

* :mod:`.modes` — gradients on, inference mode and autocast off for the engine's own
  arithmetic; the model's forwards under the caller's autocast.
* :mod:`.admission` — the model as the engine runs it (DDP unwrapped, FSDP gathered by
  :mod:`.sharded`), the selected parameters, and the models refused up front.
* :mod:`.outputs` — what the kernel differentiates (components, selectors).
* :mod:`.recorder` records the calls of a forward; :mod:`.rules` is the registry of layer
  rules (one class per call a rule models: when it applies, its cost, its terms);
  :mod:`.attention` re-dispatches ``nn.MultiheadAttention`` as its projections.
* :mod:`.guards` — run-time proofs that a rule's assumptions hold (routes, rows, coupling,
  randomness, a reentrant checkpoint, the user's fused fast paths); :mod:`.coupling` runs
  the proof that samples are independent and the forward deterministic.
* :mod:`.plan` — the budget: how much the engine may hold, and the chunks it works in.
* executors: :mod:`.structured` (Gram and per-sample-gradient terms of recognised layers),
  :mod:`.per_sample` (exact per-sample Jacobians of everything else, and the self-check),
  :mod:`.sketch` (the unbiased random-feature estimate) and :mod:`.distributed` (samples
  split across ranks).
"""

from cosmo_optim._common import MemoryBudgetError
from cosmo_optim.ntk.inputs import BatchDim, ModelInputs
from cosmo_optim.ntk.kernel import DEFAULT_SKETCH_DIM, METHODS, empirical_ntk

__all__ = [
    "DEFAULT_SKETCH_DIM", "METHODS", "BatchDim", "MemoryBudgetError", "ModelInputs",
    "empirical_ntk",
]
