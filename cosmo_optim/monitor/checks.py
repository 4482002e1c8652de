"""The options held against the run once its sizes are known (at the first reading): `top_k`
against the kernel's N·C modes, and one reading's cost against a training step.

Both return the warning's text (None when all is well), so the tracker says each once per run
and the tests read the numbers without a trainer.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.optim import Optimizer

from cosmo_optim.monitor.config import MonitorConfig

__all__ = [
    "COST_WARNING_STEPS", "cost_warning", "foreign_optimizer_warning", "nonfinite_warning",
    "probe_cost_steps", "sharding_error", "size_warnings", "top_k_warning",
]

#: A reading estimated to cost more than this many training steps gets the cost warning.
COST_WARNING_STEPS = 50


def foreign_optimizer_warning(model: nn.Module, optimizer: Optimizer) -> str | None:
    """An optimiser that updates none of the model's parameters (another model's): the
    readings would follow a model that never trains, and the duality test measures nothing."""
    ours = {id(p) for p in model.parameters()}
    theirs = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not ours or ours & theirs:
        return None
    return (f"CosmologyTracker: the optimiser ({type(optimizer).__name__}) updates none of the "
            f"parameters of the model given ({type(model).__name__}), so its readings follow "
            "weights that never change. Fix: the optimiser of that model, or the model it "
            "trains.")


def top_k_warning(config: MonitorConfig, n: int, c: int) -> str | None:
    """`top_k` above N·C, the number of modes the probe's (N·C × N·C) kernel has (T4, T7)."""
    modes = n * c
    if config.top_k <= modes:
        return None
    return (
        f"CosmologyTracker: top_k={config.top_k} exceeds N·C = {n}·{c} = {modes}, the number "
        f"of modes of the probe's kernel (N = {n} probe samples, C = {c} outputs each); "
        f"following {modes}. Fix: top_k={min(modes, 16)} (each mode adds its own tags), or a "
        "larger probe_size."
    )


def probe_cost_steps(n: int, c: int, batch_size: int) -> float:
    """A lower bound on one reading's cost in training steps: its NTK takes N·C per-output
    gradients of one sample each, a training step B samples' forward and backward. The
    kernel's (N·C)² products and its eigendecomposition come on top, so the bound is close for
    small N·C and low for large (docs/callbacks.md, "Batches as you have them")."""
    return n * c / batch_size


def cost_warning(config: MonitorConfig, n: int, c: int, batch_size: int) -> str | None:
    """The one-line warning for a reading estimated at more than `COST_WARNING_STEPS` training
    steps: by how much, the share of training time at this interval, and the two fixes."""
    steps = probe_cost_steps(n, c, batch_size)
    if steps <= COST_WARNING_STEPS:
        return None
    every, name = config.interval, config.interval_name
    smaller = max(1, math.floor(COST_WARNING_STEPS * batch_size / c))
    rarer = math.ceil(10 * steps)  # an interval of 10 readings' worth of steps: ≈ 10 % overhead
    return (
        f"CosmologyTracker: one reading will cost at least ≈ {steps:.0f} training steps (its NTK "
        f"takes N·C = {n}·{c} = {n * c} per-output gradients, a training step {batch_size} "
        f"samples'), ≥ {steps / every:.1f}× the training time at {name}={every}. Fix: "
        f"probe_size={smaller} (≤ {COST_WARNING_STEPS} steps' worth) or "
        f"{name}={max(rarer, every)} (≈ 10 % overhead)."
    )


def size_warnings(config: MonitorConfig, outputs: Tensor) -> list[str]:
    """At the first reading, when N and C are known from its outputs (N, ...): `top_k` against
    N·C and the reading's cost against a training step (if the batch size is known)."""
    n, c = outputs.shape[0], outputs[0].numel()
    messages = [top_k_warning(config, n, c)]
    if config.train_batch_size is not None:
        messages.append(cost_warning(config, n, c, config.train_batch_size))
    return [m for m in messages if m is not None]


def nonfinite_warning(step: int) -> str:
    """The warning of the first reading of a run skipped because its outputs or kernel are
    not finite (later ones are only counted, in ``cosmology/nonfinite``)."""
    why = ("the model's outputs on the probe batch are not finite before any training: check "
           "the probe batch and the initialisation" if step == 0 else
           "training continues; lower the learning rate if it diverged")
    return (
        f"CosmologyTracker: non-finite outputs or NTK at step {step}; the reading is skipped, "
        f"and so are later ones with NaN or inf, counted in cosmology/nonfinite (said once): "
        f"{why}."
    )


def sharding_error(what: str, fix: str) -> str:
    """The message of a framework strategy that shards the parameters across ranks (FSDP,
    DeepSpeed), which a monitor refuses before training: every rank reads the probe's NTK
    with the whole model (T4)."""
    return (f"{what} shards the parameters across ranks, and the monitor's NTK needs every rank "
            f"to hold all of them. Fix: {fix} (the kernel is then split across ranks), or "
            "remove the monitor.")
