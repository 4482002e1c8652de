"""The training monitor: watch a run's universe evolve (docs/theory.md T3–T10).

A framework-free engine. Every `every_n_steps` optimiser steps `CosmologyTracker` evaluates
the model on a fixed probe batch, computes the empirical NTK there (T4), its top modes (T7),
the `FLRWDual` read-out (H, Λ, Ω_φ, slow roll, mode masses; T3, T6, T8, T9), the mode
amplitudes, the kernel drift since the first probe, and the residual of the exact discrete NTK
prediction (T10). The Lightning and Hugging Face callbacks in `cosmo_optim.callbacks` are thin
adaptors over `MonitorConfig` + `CosmologyTracker`; a plain loop uses `attach(optimizer)`.

One file per job (see docs/architecture.md): `config` (options, validated once), `tags` (the
logged names), `records` (typed probe records), `batches` (probe batches as users have them),
`probe` (the arithmetic of one probe, pure), `checks` (top_k and the probe's cost against the
run), `universe` (what the optimiser says: dual, e-folds, warnings), `tracker` (scheduling and
state), `sinks` (writers, callables, TensorBoard extras), `dashboard` (layout, descriptions,
verdicts), `figures`, `images` (other loggers' image APIs) and `session` (what every framework
adaptor does around a tracker).
"""

from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.records import ProbeRecord
from cosmo_optim.monitor.tags import SCALAR_TAGS, scalar_tags
from cosmo_optim.monitor.tracker import CosmologyTracker

__all__ = ["SCALAR_TAGS", "CosmologyTracker", "MonitorConfig", "ProbeRecord", "scalar_tags"]
