"""The empirical neural tangent kernel engine (docs/theory.md T4, T7).

Public entry: :func:`empirical_ntk` (:mod:`.kernel`), on a probe batch as the model takes it,
:class:`ModelInputs` (:mod:`.inputs`: a tensor, positional or keyword arguments, samples
along a batch dimension). The modules below it, in the order a request meets them:

* :mod:`.modes` — gradients on, inference mode and autocast off for the engine's own
  arithmetic; the model's forwards under the caller's autocast.
* :mod:`.admission` — the model as the engine runs it (DDP unwrapped, FSDP gathered by
  :mod:`.sharded`), the selected parameters, and the models refused up front.
* :mod:`.outputs` — what the kernel differentiates (components, selectors).
* :mod:`.forward` — the scout of sample 0 and the one immutable :class:`.forward.Forward` it
  returns: the model call, the recorded uses, the cotangents, which rules hold; every
  executor takes it as an argument. :mod:`.recorder` records the calls of a forward;
  :mod:`.rules` is the registry of layer rules (one file per kind of layer call);
  :mod:`.attention` re-dispatches ``nn.MultiheadAttention`` as its projections.
* :mod:`.guards` — run-time proofs that a rule's assumptions hold (routes, rows, coupling,
  randomness, a reentrant checkpoint); :mod:`.coupling` runs the proof that samples are
  independent and the forward deterministic; :mod:`.fastpath` the user's fused fast paths.
* :mod:`.forms` — the table of term forms (Gram, per-sample, tied), each with its cost;
  :mod:`.plan` — the budget: how much the engine may hold, and the chunks it works in.
* executors, each taking the forward and a budget and returning terms: :mod:`.structured`
  (the terms of recognised layers), :mod:`.engine` (the exact kernel: the plan, the
  structured terms and :mod:`.per_sample`'s Jacobians of everything else) and
  :mod:`.distributed` (samples split across ranks); :mod:`.sketch` draws the random
  combinations of the outputs that ``method="sketch"`` differentiates.
"""

from cosmo_optim._common import MemoryBudgetError
from cosmo_optim.ntk.inputs import BatchDim, ModelInputs
from cosmo_optim.ntk.kernel import DEFAULT_SKETCH_DIM, METHODS, empirical_ntk

__all__ = [
    "DEFAULT_SKETCH_DIM", "METHODS", "BatchDim", "MemoryBudgetError", "ModelInputs",
    "empirical_ntk",
]
