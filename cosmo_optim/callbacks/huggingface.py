"""`CosmologyCallback`: the monitor as a Hugging Face ``transformers`` `TrainerCallback` (T3–T12).

A thin adaptor over `cosmo_optim.monitor.session.MonitorSession`: transformers' hooks, its
logging interval, its reporting integrations and ``trainer_state.json``. Importable without
``transformers``; constructing the callback then raises an ImportError naming the extra.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from cosmo_optim.monitor import MonitorConfig
from cosmo_optim.monitor.batches import take_probe_batch
from cosmo_optim.monitor.checks import sharding_error
from cosmo_optim.monitor.images import writers_of
from cosmo_optim.monitor.model_loss import MODEL_LOSS, logits_of
from cosmo_optim.monitor.records import to_json
from cosmo_optim.monitor.session import MonitorSession, Port
from cosmo_optim.monitor.summary import RunSummary

_TrainerCallback: Any
_ExportableState: Any
try:
    import transformers
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    from transformers.trainer_callback import ExportableState as _ExportableState

    _TrainerCallback, _HAVE_TRANSFORMERS = transformers.TrainerCallback, True
except ImportError:  # the optional extra is absent
    _TrainerCallback = _ExportableState = object
    _HAVE_TRANSFORMERS = False

__all__ = ["CosmologyCallback"]


class CosmologyCallback(_TrainerCallback):
    """Log the universe dual to a ``transformers.Trainer`` run (docs/theory.md T3–T12).

    ``trainer.add_callback(CosmologyCallback(..., trainer=trainer))``: the read-out and tags of
    `cosmo_optim.callbacks.CosmologyMonitor` (``docs/callbacks.md``) every ``every_n_steps``
    optimiser steps on the first ``probe_size`` training examples, collated as the Trainer
    collates them. The scalars go to ``state.log_history`` and every ``report_to`` integration
    (TensorBoard as ``train/cosmology/...`` beside ``train/loss``), not to the console; the
    Trainer's TensorBoard run also gets the charts, log10 views, histograms, cards and figures.
    Nothing the Trainer does is altered; ``resume_from_checkpoint`` continues the series
    (``trainer_state.json``); `summary()` is the end-of-run table as data.

    Args:
        loss: the per-sample loss of the logits (e.g. ``nn.CrossEntropyLoss()``); default
            ``"model"``: the model's own loss when the probe batch has labels (the console
            says which); None skips the tags that need ℓ.
        trainer: the ``transformers.Trainer`` the callback is added to (required: transformers
            hands callbacks no Trainer, and its integrations are reached through it).
        every_n_steps: reading interval in optimiser steps; default ``logging_steps``.
        probe_batch: a dict of model inputs (and ``label_key``), one row per sample.
        output: as `MonitorConfig`'s; default the logits (a language model's: select a few,
            e.g. ``output=lambda out: out.logits[:, -1, :8]`` with ``loss=None``).

    Every other argument is the `cosmo_optim.monitor.MonitorConfig` option of that name.
    Under DDP every rank computes the kernel features of its shard of the probe batch; FSDP
    and DeepSpeed are refused. Only heavy-ball momentum SGD has a de Sitter dual (AdamW: one
    warning, and the tags that need the dual are absent).

    Raises:
        ImportError: ``transformers`` is not installed.
        ValueError: an invalid argument; no ``trainer`` (``Trainer(callbacks=[...])`` is no
            way in: the message names the fix) or not the Trainer running the callback.

    Example:
        >>> trainer = transformers.Trainer(model, args, train_dataset=data)  # doctest: +SKIP
        >>> trainer.add_callback(CosmologyCallback(trainer=trainer))  # doctest: +SKIP
    """

    def __init__(self, loss: Any = MODEL_LOSS, *, trainer: Any = None,
                 every_n_steps: int | None = None, top_k: int = 4,
                 probe_batch: Mapping[str, Tensor] | None = None, probe_size: int = 16,
                 input_key: str = "input_ids", label_key: str = "labels",
                 log_figures_every_n_steps: int | None = None, prefix: str = "",
                 verify_ntk: bool = False, ntk_method: str = "exact", sketch_dim: int | None = None,
                 output: str | Callable[[Any], Tensor] | None = None, group: int = 0,
                 history_size: int = 1000) -> None:
        if not _HAVE_TRANSFORMERS:
            raise ImportError("CosmologyCallback needs transformers. Fix: pip install "
                              "'cosmo-optim[hf]'.")
        self.config = MonitorConfig(
            loss, probe_size, top_k, every_n_steps, log_figures_every_n_steps, history_size,
            prefix, group, logits_of if output is None else output, verify_ntk, ntk_method,
            sketch_dim, input_key=input_key, label_key=label_key)
        self.probe_batch = None if probe_batch is None else take_probe_batch(
            probe_batch, probe_size, input_key=input_key, label_key=label_key, keywords=True)
        if not isinstance(trainer, transformers.Trainer):
            why = ("none: Trainer(callbacks=[CosmologyCallback(...)]) cannot give the callback "
                   "its Trainer" if trainer is None else f"{trainer!r:.60}")
            raise ValueError(
                f"Invalid trainer: {why}; it must be the transformers.Trainer the callback is "
                "added to. Fix: trainer.add_callback(CosmologyCallback(..., trainer=trainer)).")
        self.trainer, self.session = trainer, MonitorSession("CosmologyCallback")
        self.saved = CosmologyCallbackState()  # trainer_state.json's share of the monitor
        trainer.add_callback(self.saved)

    tracker = property(lambda self: self.session.tracker,
                       doc="The run's CosmologyTracker (None before training starts).")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check the run, build the tracker (a checkpoint's state restored), take the probe
        batch and read the initial state (step 0)."""
        if self not in self.trainer.callback_handler.callbacks:
            raise ValueError("CosmologyCallback: trainer= is not the Trainer running this "
                             "callback. Fix: trainer.add_callback(CosmologyCallback(..., "
                             "trainer=trainer)) on the Trainer you train.")
        distributed = args.world_size > 1
        if distributed and (args.fsdp or args.deepspeed):
            raise ValueError(sharding_error("CosmologyCallback: FSDP or DeepSpeed",
                                            "train with plain DDP (torchrun)"))
        every = self.config.every_n_steps or max(int(state.logging_steps or 1), 1)
        if self.config.every_n_steps is None and args.logging_strategy != "steps":
            warnings.warn(f"CosmologyCallback: logging_strategy={args.logging_strategy.value!r}, "
                          f"so the Trainer does not log every {every} steps; the monitor still "
                          "reads every logging_steps. Fix: CosmologyCallback(every_n_steps=...).",
                          UserWarning, stacklevel=2)
        self._resume(state)
        self.session.start(kwargs["model"], dataclasses.replace(
            self.config.with_interval(every), distributed=distributed, train_batch_size=(
                args.per_device_train_batch_size * args.gradient_accumulation_steps)),
            port=_HuggingFacePort(self.trainer), optimizer=kwargs.get("optimizer"))
        self.session.share_probe(self.probe_batch, kwargs["train_dataloader"], keywords=True)
        self.session.on_step(state.global_step)

    def _resume(self, state: Any) -> None:
        """Link this callback's `CosmologyCallbackState` (the one transformers may have rebuilt
        from the checkpoint: the k-th monitor's is the k-th) and, on a resume (a step > 0),
        restore the monitor's state from ``trainer_state.json`` (also under this class's name,
        as checkpoints before the holder kept it); a fresh ``train()`` is a new series."""
        handler = self.trainer.callback_handler.callbacks
        holders = [c for c in handler if isinstance(c, CosmologyCallbackState)]
        mine = [c for c in handler if isinstance(c, CosmologyCallback)].index(self)
        if mine < len(holders):
            self.saved = holders[mine]
        else:  # removed from the Trainer since: kept again
            self.trainer.add_callback(self.saved)
        self.saved.owner = self
        if state.global_step == 0:  # not a resume
            return
        kept = state.stateful_callbacks or {}
        stored = kept.get(CosmologyCallbackState.__name__) or kept.get(type(self).__name__) or []
        self.session.load_json([s.get("attributes", {}).get("saved_state") for s in (
            stored if isinstance(stored, list) else [stored])], self.config.prefix,
            fallback=self.saved.saved_state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After each optimiser step: a reading when due."""
        if self.tracker is not None:
            self.session.on_step(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The final figures (to the TensorBoard writer the Trainer has just closed: reopened
        and closed again) and the summary table on the console."""
        if self.tracker is not None:
            self.session.end(close=True)

    def summary(self) -> RunSummary:
        """What the run's readings say (`cosmo_optim.monitor.summary.RunSummary`)."""
        return self.session.summary()


class CosmologyCallbackState(_TrainerCallback, _ExportableState):
    """A `CosmologyCallback`'s state in ``trainer_state.json`` (transformers' ExportableState).

    A holder apart from the callback, because transformers restores callback states
    (``restore_callback_states_from_checkpoint=True``) by rebuilding each callback from JSON
    arguments, which the monitor (its loss, its Trainer) cannot be; this holder can."""

    def __init__(self) -> None:
        self.saved_state: Any = None  # set by transformers when it restores the holder
        self.owner: CosmologyCallback | None = None

    def state(self) -> dict[str, Any]:
        """The tracker's state as JSON (the checkpoint's, before training resumes)."""
        tracker = None if self.owner is None else self.owner.tracker
        saved = tracker.state_dict() if tracker is not None else self.saved_state
        return {"args": {}, "attributes": {"saved_state": to_json(saved)}}


class _HuggingFacePort(Port):
    """The Trainer as the session sees it: its step, ``state.log_history``, and the on_log of
    its reporting integrations only (its console printer would print every tag); TensorBoard's
    writes our scalars as ``train/<tag>``, and so the extras are written."""

    writer_prefix = "train/"

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def rank_zero(self) -> bool:
        return bool(self.trainer.state.is_world_process_zero)

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        trainer = self.trainer
        trainer.state.log_history.append({**metrics, "step": step})
        for integration in self._integrations():
            integration.on_log(trainer.args, trainer.state, trainer.control, logs=dict(metrics))

    def writers(self) -> tuple[list[Any], list[str]]:
        board = transformers.integrations.TensorBoardCallback
        writers, dropped = writers_of(self._integrations(), lambda c: c.tb_writer if isinstance(
            c, board) else None)
        return writers, dropped or ([] if writers else [
            f"the Trainer (report_to={self.trainer.args.report_to!r})"])

    def _integrations(self) -> list[Any]:
        kinds = tuple(INTEGRATION_TO_CALLBACK.values())
        return [c for c in self.trainer.callback_handler.callbacks if isinstance(c, kinds)]
