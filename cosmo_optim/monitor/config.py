"""`MonitorConfig`: every monitor option, validated once (the tracker and each adaptor reuse it).

A frozen value: `CosmologyTracker`, the Lightning `CosmologyMonitor` and the Hugging Face
`CosmologyCallback` build one from their arguments, so each invalid argument gets the same
message wherever it is given. The reading interval may stay open (None) until a Trainer supplies
it (``log_every_n_steps``, ``logging_steps``): `with_interval` closes it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from cosmo_optim._common import check_int
from cosmo_optim.losses import PerSampleLoss, per_sample_loss

__all__ = ["NTK_METHODS", "MonitorConfig"]

#: How a monitor computes each reading's kernel: exactly (the full N·C kernel, streamed by
#: `empirical_ntk` under its memory budget). Not `empirical_ntk`'s ``method``, which chooses
#: how the exact kernel is computed, per parameter.
NTK_METHODS = ("exact",)

#: Former values of ``ntk_method``, accepted with a DeprecationWarning and read as "exact":
#: the sketch (random combinations of the C output components, `empirical_ntk(method=
#: "sketch")`) estimates the trace kernel only, and a monitor reads the full N·C kernel.
_FORMER_METHODS = ("fit", "auto", "sketch")


@dataclass(frozen=True)
class MonitorConfig:
    """What to read, how often, and how to label it (docs/callbacks.md).

    Args:
        loss: the training loss (a torch loss module, `PolynomialPotentialLoss` or a
            per-sample callable, converted by `cosmo_optim.losses.per_sample_loss`); ``"model"``
            for the model's own loss, found at the first reading by calling the model with its
            targets as keyword `label_key` (a Hugging Face model: by its problem type, the
            language-model shift; `cosmo_optim.monitor.model_loss`); None skips the tags that
            need ℓ (the potential, Ω_φ, slow roll, masses, forecast).
        probe_size: at most this many probe samples N.
        top_k: modes to follow (1 ≤ top_k ≤ N·C).
        every_n_steps: read every n optimiser steps (and at step 0); None until a Trainer
            supplies its logging interval (`with_interval`).
        log_figures_every_n_steps: draw figures at these steps (a multiple of
            `every_n_steps`) and once more at the end of the run; None (the default) draws
            none: three figures cost ≈ 0.2 s, more than a dozen readings.
        history_size: readings kept in the tracker's `history` (oldest dropped first).
        prefix: prepended to every tag.
        group: the optimiser's param group whose (lr, momentum) define the universe.
        output: for a model whose ``forward`` returns a tuple, dict or ``ModelOutput``: the
            key/attribute (``"logits"``) or a callable (``lambda out: out[0]``) selecting the
            outputs the loss is applied to.
        verify_ntk: recompute a few entries of the first reading's kernel by brute force and
            raise if they disagree (`empirical_ntk(..., verify=True)`; one forward and C
            backward passes of 3 samples, once per run). Exact kernels only.
        ntk_method: ``"exact"``, the only kernel a monitor reads: the full N·C kernel of the
            probe batch, which `empirical_ntk` streams under its default memory budget
            (per output component, in chunks of samples). ``"fit"``, ``"auto"`` and
            ``"sketch"``, former values, still work with a DeprecationWarning and read the
            exact kernel: the sketch combines the C output components at random, which
            estimates the trace kernel only (docs/performance.md). Every reading logs
            ``ntk/sketch_dim``, 0 for the exact kernel (a run resumed from a checkpoint
            whose readings were sketched keeps their k in its history).
        sketch_dim: deprecated with the monitor's sketch (a DeprecationWarning; the value is
            dropped, as the kernel is exact).
        distributed: every rank of an initialised ``torch.distributed`` group takes each reading
            with the same probe batch, and each computes the kernel features of its shard
            (`empirical_ntk(distributed=True)`); the Lightning monitor sets it under DDP.
        input_key: for dict batches, the key of the model's inputs; None takes the first of
            `cosmo_optim.monitor.batches.INPUT_KEYS` present (``"inputs"``, ``"x"``,
            ``"input_ids"``, ``"pixel_values"``, ...).
        label_key: for dict batches, the key of the targets; None takes the first of
            `cosmo_optim.monitor.batches.LABEL_KEYS` present (``"labels"``, ``"y"``, ...).
        train_batch_size: samples per optimiser step of training (the adaptors set it from
            the Trainer), for the one warning when a reading will cost more than
            `cosmo_optim.monitor.checks.COST_WARNING_STEPS` training steps; None: no check.
        interval_name: how the user spelled `every_n_steps` (``every_n_train_steps`` in
            Lightning), for error messages.

    Raises:
        ValueError: naming the bad value, the constraint and the fix.

    Example:
        >>> MonitorConfig(top_k=3, every_n_steps=None).with_interval(10).every_n_steps
        10
    """

    loss: PerSampleLoss | str | None = None
    probe_size: int = 16
    top_k: int = 4
    every_n_steps: int | None = 50
    log_figures_every_n_steps: int | None = None
    history_size: int = 1000
    prefix: str = ""
    group: int = 0
    output: str | Callable[[Any], Tensor] | None = None
    verify_ntk: bool = False
    ntk_method: str = "exact"
    sketch_dim: int | None = None
    distributed: bool = False
    input_key: str | None = None
    label_key: str | None = None
    train_batch_size: int | None = None
    interval_name: str = field(default="every_n_steps", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.loss is not None and not isinstance(self.loss, PerSampleLoss) and not (
                isinstance(self.loss, str) and self.loss == "model"):
            object.__setattr__(self, "loss", per_sample_loss(self.loss))
        self._check_counts()
        if not isinstance(self.prefix, str):
            raise ValueError(
                f"Invalid prefix: {self.prefix!r}; it must be a string such as 'train/'."
            )
        if isinstance(self.group, bool) or not isinstance(self.group, int):
            raise ValueError(
                f"Invalid group: {self.group!r}; it must be the integer index of a param group."
            )
        if not (self.output is None or isinstance(self.output, str) or callable(self.output)):
            raise ValueError(
                f"Invalid output: {self.output!r}; give a key such as 'logits' or a callable "
                "out -> Tensor (e.g. output=lambda out: out[0])."
            )
        for name in ("input_key", "label_key"):
            if not (getattr(self, name) is None or isinstance(getattr(self, name), str)):
                raise ValueError(
                    f"Invalid {name}: {getattr(self, name)!r}; it must be a key of the dict "
                    "batch (a string such as 'x' or 'labels'), or None for the default keys."
                )
        for name in ("verify_ntk", "distributed"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"Invalid {name}: {getattr(self, name)!r}; it must be True or False."
                )
        self._check_kernel()
        self._check_figures()

    def _check_counts(self) -> None:
        """Each count an integer ≥ 1 (None where optional), stored as an int (NumPy's too)."""
        fixes = {"probe_size": "Use e.g. probe_size=64.", "top_k": "Use e.g. top_k=4.",
                 "history_size": "Keep at least one reading.",
                 "every_n_steps": "Read every n ≥ 1 optimiser steps.",
                 "log_figures_every_n_steps": "Or None to draw no figures.",
                 "train_batch_size": "Give the samples per optimiser step, or None."}
        optional = ("every_n_steps", "log_figures_every_n_steps", "train_batch_size")
        for name, fix in fixes.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            shown = self.interval_name if name == "every_n_steps" else name
            object.__setattr__(self, name, check_int(shown, value, 1, fix))

    def _check_kernel(self) -> None:
        if self.ntk_method in _FORMER_METHODS:
            warnings.warn(
                f"ntk_method={self.ntk_method!r} is deprecated: a monitor reads the exact kernel "
                "(the full N·C kernel, which empirical_ntk streams under its memory budget); "
                "the sketch, random combinations of the output components, estimates only the "
                "trace kernel. Fix: drop ntk_method (or ntk_method='exact').",
                DeprecationWarning, stacklevel=5,
            )
            object.__setattr__(self, "ntk_method", "exact")
        if self.ntk_method not in NTK_METHODS:
            raise ValueError(
                f"Invalid ntk_method: {self.ntk_method!r}; it must be one of "
                f"{list(NTK_METHODS)}. Fix: drop ntk_method (the monitor's kernel is exact)."
            )
        if self.sketch_dim is not None:
            warnings.warn(
                f"sketch_dim={self.sketch_dim!r} is deprecated and dropped: a monitor reads "
                "the exact kernel (the sketch estimates only the trace kernel). Fix: drop "
                "sketch_dim.",
                DeprecationWarning, stacklevel=5,
            )
            object.__setattr__(self, "sketch_dim", None)

    def _check_figures(self) -> None:
        every, figures = self.every_n_steps, self.log_figures_every_n_steps
        if every is not None and figures is not None and figures % every:
            raise ValueError(
                f"Invalid log_figures_every_n_steps: {figures!r}; it must be a multiple of "
                f"{self.interval_name}={every} (figures are drawn at readings). Fix: use "
                f"log_figures_every_n_steps={every * max(1, round(figures / every))}."
            )

    def with_interval(self, every_n_steps: int) -> MonitorConfig:
        """This configuration with the reading interval set (if it was open)."""
        if self.every_n_steps is not None:
            return self
        return dataclasses.replace(self, every_n_steps=every_n_steps)

    @property
    def interval(self) -> int:
        """The reading interval; a RuntimeError while it is still open."""
        if self.every_n_steps is None:
            raise RuntimeError(
                "MonitorConfig: the reading interval is not set yet (with_interval).")
        return self.every_n_steps

    def key(self) -> str:
        """A short, stable description of the options (a Lightning callback's `state_key`)."""
        return repr({
            "loss": None if self.loss is None else repr(self.loss),
            "probe_size": self.probe_size, "top_k": self.top_k,
            "every_n_steps": self.every_n_steps,
            "prefix": self.prefix, "group": self.group,
        })  # not the kernel options: a resumed run with another kernel keeps its state
