"""`CosmologyCallback`: the monitor as a Hugging Face ``transformers`` `TrainerCallback` (T3–T10).

A thin adaptor over `cosmo_optim.monitor.MonitorConfig` + `CosmologyTracker`. Importable
without ``transformers`` (for docs and introspection); constructing the callback then raises
an ImportError naming the extra to install (``pip install cosmo-optim[hf]``).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cosmo_optim.monitor import CosmologyTracker, MonitorConfig
from cosmo_optim.monitor.batches import device_of, to_model
from cosmo_optim.monitor.dashboard import describe_scalars
from cosmo_optim.monitor.images import figures_dropped_warning, image_writer
from cosmo_optim.monitor.records import from_json, to_json

_TrainerCallback: Any
_ExportableState: Any
try:
    import transformers
    from transformers.trainer_callback import ExportableState as _ExportableState

    _TrainerCallback = transformers.TrainerCallback
    _HAVE_TRANSFORMERS = True
except ImportError:  # the optional extra is absent
    _TrainerCallback = _ExportableState = object
    _HAVE_TRANSFORMERS = False

__all__ = ["CosmologyCallback"]


class _Inputs(nn.Module):
    """The model on probe samples picked by index: ``model(**batch[idx]).logits``.

    Every tensor the collator produced (input ids, attention masks, token type ids, pixel
    values) goes to the model, row-aligned with the samples, so the NTK engine sees a map
    from sample indices (N,) to outputs (N, ...)."""

    def __init__(self, model: nn.Module, batch: Mapping[str, Tensor], label_key: str) -> None:
        super().__init__()
        self.model = model
        self.batch = {k: v for k, v in batch.items() if k != label_key}

    def forward(self, index: Tensor) -> Any:
        rows = index.long()
        return self.model(**{k: to_model(self.model, v)[rows.to(device_of(self.model))]
                             for k, v in self.batch.items()})


def _logits(out: Any) -> Tensor:
    """``out.logits`` / ``out["logits"]`` of a ModelOutput or dict, else ``out[0]``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        return out["logits"]
    return out[0]


def _distributed(args: Any) -> bool:
    """True under multi-process DDP (the probe's kernel is split across ranks); an error for
    strategies that shard the parameters, where no rank holds the whole model."""
    if getattr(args, "world_size", 1) <= 1 or not (
            torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
        raise ValueError(
            "CosmologyCallback: FSDP and DeepSpeed shard the parameters across ranks, and the "
            "probe's NTK needs every rank to hold all of them. Fix: train with plain DDP "
            "(torchrun without fsdp/deepspeed), or remove the callback."
        )
    return True


def _find_trainer() -> Any:
    """The ``transformers.Trainer`` whose callback handler is calling us (up the stack)."""
    frame = inspect.currentframe()
    for _ in range(12):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, transformers.Trainer):
            return owner
    return None


class CosmologyCallback(_TrainerCallback, _ExportableState):
    """Log the universe dual to a ``transformers.Trainer`` run (docs/theory.md T3–T10).

    Same read-out and tags as `cosmo_optim.callbacks.CosmologyMonitor` (see
    ``docs/callbacks.md``), probed every ``every_n_steps`` optimiser steps (default: the
    Trainer's ``logging_steps``) on a fixed probe batch. The scalars are logged through the
    Trainer (``trainer.log``): they appear in ``state.log_history`` and in every ``report_to``
    integration (TensorBoard beside ``train/loss`` as ``train/cosmology/...``, W&B, MLflow,
    ...). With TensorBoard reporting, the histograms, custom-scalars layout and figures go to
    the Trainer's own TensorBoard run. Every model input the collator produces (attention
    masks, token type ids) reaches the model on the probe batch. The callback's state (e-folds,
    history, first-probe basis) is saved in checkpoints (``trainer_state.json``, transformers'
    stateful-callback mechanism), so ``resume_from_checkpoint`` continues the same series.

    Only heavy-ball momentum SGD (``optimizers=(SGD/CosmoSGD, None)``) has a de Sitter dual;
    with the default AdamW only the NTK and mode tags appear, and the callback warns once.

    Args:
        loss: the per-sample loss of the logits (e.g. ``nn.CrossEntropyLoss()``); None skips
            the tags that need ℓ.
        every_n_steps: probe interval in optimiser steps; default ``args.logging_steps``.
        top_k: modes to follow.
        probe_batch: a dict of model inputs (and ``label_key``), one row per sample; default
            the first ``probe_size`` training examples, collated by the Trainer's collator.
        probe_size: at most this many probe samples.
        input_key: a model input with one row per sample (``"input_ids"``).
        label_key: the targets' key (``"labels"``).
        output: the outputs f the NTK is taken of: a key/attribute of the model's output or a
            callable of it; default its logits. A language model's logits have T·V components
            per sample and a kernel of (N·T·V)² entries: select a few, e.g.
            ``output=lambda out: out.logits[:, -1, :8]`` (with ``loss=None``).
        log_figures_every_n_steps: draw figures at these steps and once more at the end;
            None (default) draws none (they cost ≈ 0.2 s, more than a dozen probes).
        prefix: prepended to every tag.
        verify_ntk: check the first probe's kernel against brute force (a few entries, one
            forward and C backward passes each) and raise if it is off; see
            ``empirical_ntk(verify=True)``. Exact kernels only.
        ntk_method: ``"auto"`` (the exact kernel where it fits `empirical_ntk`'s default
            2 GiB memory budget, else the sketch), ``"exact"`` or ``"sketch"``; every probe
            logs ``ntk/sketch_dim`` (0: exact).
        sketch_dim: k of the sketched kernel (``empirical_ntk(method="sketch")``; default
            128).
        group: the optimiser's param group whose (lr, momentum) define the universe (the
            param-group warning's ``group=...``).
        history_size: probes kept in ``callback.tracker.history``.

    ``distributed`` (`MonitorConfig`) is not an argument: it is set under DDP (torchrun).

    Under DDP (``torchrun``) rank 0's probe batch is broadcast and each rank computes the
    kernel features of its shard of it (``empirical_ntk(distributed=True)``); FSDP and
    DeepSpeed, which shard the parameters, are refused.

    Raises:
        ImportError: ``transformers`` is not installed.
        ValueError: an invalid argument, or a probe batch without ``input_key``.

    Example:
        >>> callback = CosmologyCallback(every_n_steps=10)  # doctest: +SKIP
        >>> trainer = transformers.Trainer(..., callbacks=[callback])  # doctest: +SKIP
    """

    def __init__(
        self,
        loss: Any = None,
        *,
        every_n_steps: int | None = None,
        top_k: int = 4,
        probe_batch: Mapping[str, Tensor] | None = None,
        probe_size: int = 16,
        input_key: str = "input_ids",
        label_key: str = "labels",
        log_figures_every_n_steps: int | None = None,
        prefix: str = "",
        verify_ntk: bool = False,
        ntk_method: str = "auto",
        sketch_dim: int | None = None,
        output: str | Callable[[Any], Tensor] | None = None,
        group: int = 0,
        history_size: int = 1000,
    ) -> None:
        if not _HAVE_TRANSFORMERS:
            raise ImportError(
                "CosmologyCallback needs transformers. Fix: pip install 'cosmo-optim[hf]'."
            )
        self.config = MonitorConfig(
            loss, probe_size, top_k, every_n_steps, log_figures_every_n_steps,
            history_size=history_size, prefix=prefix, group=group,
            output=_logits if output is None else output, verify_ntk=verify_ntk,
            ntk_method=ntk_method, sketch_dim=sketch_dim,
        )
        self.input_key, self.label_key = input_key, label_key
        self.probe_batch = None if probe_batch is None else self._probe(probe_batch)
        self.tracker: CosmologyTracker | None = None
        self.saved_state: dict[str, Any] | None = None  # from a checkpoint, until training starts
        self._trainer: Any = None
        self._writer: Any = None
        self._figures_warned = False  # the one dropped-figures warning of a run

    def _probe(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        if self.input_key not in batch:
            raise ValueError(
                f"Invalid probe batch: no {self.input_key!r} key (keys {sorted(batch)}). "
                "Fix: pass input_key=... naming a model input with one row per sample."
            )
        rows, labels = len(batch[self.input_key]), batch.get(self.label_key)
        if isinstance(labels, Tensor) and labels.dim() > 0 and len(labels) != rows:
            raise ValueError(
                f"Invalid probe batch: {len(labels)} {self.label_key!r} for {rows} "
                f"{self.input_key!r} rows; the loss needs one target per sample. Fix: one "
                f"row of {self.label_key!r} per sample, or label_key=... naming the targets."
            )
        n = min(rows, self.config.probe_size)
        return {k: v[:n].detach().cpu().clone() for k, v in batch.items()
                if isinstance(v, Tensor) and v.dim() > 0 and len(v) == rows}

    # ----- transformers' stateful-callback mechanism (ExportableState) --------------------
    def state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` keeps: the tracker's state as JSON values."""
        saved = self.tracker.state_dict() if self.tracker is not None else self.saved_state
        return {"args": {}, "attributes": {"saved_state": to_json(saved)}}

    def _restore(self, state: Any) -> None:
        stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if isinstance(stored, list):  # several CosmologyCallbacks: ours by the same prefix
            stored = next((s for s in stored if self._matches(s)), None)
        saved = None if not stored else stored.get("attributes", {}).get("saved_state")
        if saved and self.tracker is not None:
            self.tracker.load_state_dict(from_json(saved))

    def _matches(self, stored: Mapping[str, Any]) -> bool:
        saved = from_json(stored.get("attributes", {}).get("saved_state") or {})
        history = saved.get("history") or [{"scalars": {}}]
        return all(k.startswith(self.config.prefix) for k in history[-1]["scalars"])

    # ----- the events -----------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Warn that transformers would rebuild this callback without its loss."""
        if getattr(args, "restore_callback_states_from_checkpoint", False):
            warnings.warn(
                "CosmologyCallback: restore_callback_states_from_checkpoint=True makes "
                "transformers rebuild callbacks from JSON arguments, which cannot hold the loss; "
                "the rebuilt callback would log no loss-dependent tags. CosmologyCallback "
                "restores itself from the checkpoint: leave that option False.",
                UserWarning,
                stacklevel=2,
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Build the tracker, take the probe batch, restore a checkpoint's state, and probe
        the initial state (step 0)."""
        model, optimizer = kwargs["model"], kwargs.get("optimizer")
        probe = self.probe_batch if self.probe_batch is not None else self._first_examples(
            kwargs["train_dataloader"])
        distributed = _distributed(args)
        if distributed:  # one probe batch for every rank (a collator may draw random numbers)
            shared = [probe]
            torch.distributed.broadcast_object_list(shared, src=0)
            probe = shared[0]
        index = torch.arange(len(probe[self.input_key]))
        self._trainer = _find_trainer()
        config = self.config.with_interval(max(int(args.logging_steps), 1))
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.tracker = CosmologyTracker.from_config(
            _Inputs(model, probe, self.label_key),
            dataclasses.replace(config, distributed=distributed, train_batch_size=per_step),
            probe_batch=(index, probe.get(self.label_key)),
        )
        # the Trainer's TensorBoardCallback writes our scalars as train/<tag> (rewrite_logs):
        # the layout, histograms and figures follow, or the dashboard would match nothing
        self.tracker.extras.prefix = "train/" + self.config.prefix
        if optimizer is not None:
            self.tracker.observe(optimizer)
        self._restore(state)
        if self.saved_state and self.tracker.last_step < 0:
            self.tracker.load_state_dict(from_json(self.saved_state))
        if state.global_step == 0 and self.tracker.last_step < 0:
            self._log(args, state, self.tracker.step(0), 0)
        elif self.tracker.last_step < state.global_step:
            self.tracker.last_step = state.global_step

    def _first_examples(self, loader: Any) -> dict[str, Tensor]:
        with torch.random.fork_rng():  # a collator may draw random numbers (MLM masking)
            size = min(self.config.probe_size, len(loader.dataset))
            return self._probe(loader.collate_fn([loader.dataset[i] for i in range(size)]))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After each optimiser step: probe when due and log through the Trainer."""
        if self.tracker is not None:
            self._log(args, state, self.tracker.step(state.global_step), state.global_step)

    def _log(self, args: Any, state: Any, metrics: dict[str, float] | None, step: int) -> None:
        if not metrics or self.tracker is None:
            return
        writer = self._writer = self._tensorboard_writer() or self._writer
        if writer is not None and state.is_world_process_zero:
            describe_scalars(writer)  # before the Trainer writes our first values
        if self._trainer is not None:
            control = self._trainer.control
            flags = control.should_log, control.should_save, control.should_evaluate
            self._trainer.log(dict(metrics))  # resets should_log: the Trainer's own logs stay due
            control = self._trainer.control
            control.should_log, control.should_save, control.should_evaluate = flags
        else:  # called outside a Trainer: keep the history at least
            state.log_history.append({**metrics, "step": step})
        if state.is_world_process_zero:
            for target in [writer, *self._image_writers(args)]:
                if target is not None:
                    self.tracker.write_extras(target, step)

    def _image_writers(self, args: Any) -> list[Any]:
        """With figures on: the image APIs of the Trainer's other ``report_to`` integrations
        (W&B, MLflow), and one warning per run naming those that have none."""
        if self._trainer is None or self.config.log_figures_every_n_steps is None:
            return []
        reporting = tuple(transformers.integrations.get_reporting_integration_callbacks(
            args.report_to))
        writers, dropped = [], []
        for callback in self._trainer.callback_handler.callbacks:
            if isinstance(callback, reporting) and type(callback).__name__ != (
                    "TensorBoardCallback"):
                writer = image_writer(callback)
                writers += [writer] if writer is not None else []
                dropped += [] if writer is not None else [type(callback).__name__]
        if not writers and self._writer is None and not dropped:
            dropped = [f"the Trainer (report_to={args.report_to!r})"]
        if dropped and not self._figures_warned:
            self._figures_warned = True
            warnings.warn(figures_dropped_warning("CosmologyCallback", dropped), stacklevel=4)
        return writers

    def _tensorboard_writer(self) -> Any:
        """The SummaryWriter of the Trainer's own TensorBoardCallback, if it reports there."""
        if self._trainer is None:
            return None
        for callback in self._trainer.callback_handler.callbacks:
            if type(callback).__name__ == "TensorBoardCallback":
                return getattr(callback, "tb_writer", None)
        return None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Draw the final figures (if enabled) to the Trainer's TensorBoard run."""
        if self.tracker is None:
            return
        writer, step = self._writer, self.tracker.final_figures_step()
        if step is not None and state.is_world_process_zero:
            for target in self._image_writers(args):
                self.tracker.write_figures(target, step)
            if writer is not None:
                self.tracker.write_figures(writer, step)  # reopens the run TensorBoard closed
                writer.close()
        self.tracker.detach()
        self._trainer = self._writer = None
