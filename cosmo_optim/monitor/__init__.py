"""The training monitor: watch a run's universe evolve (docs/theory.md T3–T10).

A framework-free engine. Every `every_n_steps` optimiser steps `CosmologyTracker` takes a
*reading*: it evaluates the model on the *probe batch* (fixed samples), computes the empirical
NTK there (T4), all its modes (T7, the `top_k` logged), the `FLRWDual` read-out (H, Λ, Ω_φ,
slow roll, mode masses; T3, T6, T8, T9), the mode amplitudes, how far the kernel moved, and the
residual of the outputs against their linearisation through the previous reading's frozen
kernel (the duality test, T12) beside the dual's full-batch forecast (T10); the history holds
one `Reading` per reading. The Lightning and Hugging Face callbacks in `cosmo_optim.callbacks`
are thin adaptors over `MonitorConfig` + `CosmologyTracker`; a plain loop uses
`attach(optimizer)`.

One file per job (see docs/architecture.md): `config` (options, validated once), `tags` (the
logged names), `records` (typed records: `Reading`, the first and latest reading), `batches`
(probe batches as users have them), `indexed` (a collator's dict of model inputs, probed by
index), `reading` (one reading of the model), `readout` (its arithmetic, pure), `verdict`
(does it follow its dual, and why not), `checks` (top_k and a reading's cost
against the run), `universe` (what the optimiser says: dual, e-folds, warnings), `state` (what
a run carries from one reading to the next), `guard` (fail fast, then fail soft: what a
reading that raises does to the run), `tracker` (scheduling), `sinks` (writers,
callables, TensorBoard extras), `dashboard` (layout, descriptions, verdicts), `figures`,
`images` (other loggers' image APIs), `session` (what every framework adaptor does around a
tracker) and `names` (former names, deprecated).
"""

from typing import Any

from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.records import Reading
from cosmo_optim.monitor.tags import SCALAR_TAGS, scalar_tags
from cosmo_optim.monitor.tracker import CosmologyTracker

__all__ = ["SCALAR_TAGS", "CosmologyTracker", "MonitorConfig", "Reading", "scalar_tags"]


def __getattr__(name: str) -> Any:
    if name == "ProbeRecord":  # the former name of `Reading`, with one DeprecationWarning
        from cosmo_optim.monitor import records

        return records.ProbeRecord
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
