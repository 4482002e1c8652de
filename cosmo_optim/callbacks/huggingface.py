"""`CosmologyCallback`: the monitor as a Hugging Face ``transformers`` `TrainerCallback` (T3–T10).

A thin adaptor: the options are `cosmo_optim.monitor.MonitorConfig`'s, the work
`CosmologyTracker`'s, the jobs every adaptor shares (rank-0 probe batch, rank-0 writes,
end-of-run figures, state across a resume) `cosmo_optim.monitor.session.MonitorSession`'s, and
a collator's dict of model inputs is probed through `cosmo_optim.monitor.indexed`. What is left
here is transformers': its hooks, ``TrainingArguments``, ``trainer.log``, its TensorBoard run
and ``trainer_state.json``. Importable without ``transformers`` (for docs and introspection);
constructing the callback then raises an ImportError naming the extra to install
(``pip install cosmo-optim[hf]``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cosmo_optim.monitor import MonitorConfig
from cosmo_optim.monitor.indexed import IndexedInputs, logits_of, take_rows
from cosmo_optim.monitor.records import from_json, to_json
from cosmo_optim.monitor.session import MonitorSession
from cosmo_optim.monitor.state import dropped_state_warning

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


def _tensorboard_dir(args: Any) -> str:
    """The directory of the Trainer's TensorBoard run, which its ``TensorBoardCallback`` has
    just opened (integrations precede user callbacks in ``on_train_begin``): ``logging_dir``
    (transformers 4), else ``TENSORBOARD_LOGGING_DIR``, else the newest
    ``output_dir/runs/<time>_<host>`` (transformers 5's default), else a new one of that form."""
    chosen = getattr(args, "logging_dir", None) or os.getenv("TENSORBOARD_LOGGING_DIR")
    if chosen:
        return os.path.expanduser(chosen)
    host = socket.gethostname()
    made = [p for p in Path(args.output_dir, "runs").glob(f"*_{host}") if p.is_dir()]
    if made:
        return str(max(made, key=lambda p: p.stat().st_mtime))
    from transformers.integrations.integration_utils import default_logdir

    return os.path.join(args.output_dir, default_logdir())


def _logging_interval(args: Any, state: Any, config: MonitorConfig) -> int:
    """The Trainer's logging interval in optimiser steps: ``state.logging_steps`` (a fractional
    ``logging_steps`` is a share of ``max_steps``, resolved by the Trainer), warning once when
    the Trainer does not log by steps and ``every_n_steps`` was not given."""
    steps = max(int(getattr(state, "logging_steps", None) or args.logging_steps), 1)
    strategy = str(getattr(args, "logging_strategy", "steps")).rsplit(".", 1)[-1].lower()
    if config.every_n_steps is None and strategy != "steps":
        warnings.warn(
            f"CosmologyCallback: logging_strategy={strategy!r}, so the Trainer does not log "
            f"every logging_steps={steps}; the monitor still reads every {steps} steps. Fix: "
            "pass every_n_steps=... to CosmologyCallback.",
            UserWarning,
            stacklevel=3,
        )
    return steps


def _unreached_warning(report_to: list[str], figures: bool) -> str:
    """What a callback without ``trainer=`` cannot send to the non-TensorBoard integrations."""
    what = "scalars" + (" and figures" if figures else "")
    return (
        f"CosmologyCallback: without trainer=, its {what} do not reach report_to="
        f"{report_to!r} (transformers gives callbacks no route to the Trainer's integrations); "
        "they are in trainer.state.log_history (and in TensorBoard when reporting to it). Fix: "
        "trainer.add_callback(CosmologyCallback(..., trainer=trainer))."
    )


def _close_writers(writers: list[Any]) -> None:
    """Close each ``SummaryWriter`` once: ours, or the Trainer's that the figures reopened."""
    for writer in {id(w): w for w in writers if w is not None}.values():
        if hasattr(writer, "add_scalar"):
            writer.close()


class CosmologyCallback(_TrainerCallback, _ExportableState):
    """Log the universe dual to a ``transformers.Trainer`` run (docs/theory.md T3–T10).

    Same read-out and tags as `cosmo_optim.callbacks.CosmologyMonitor` (see
    ``docs/callbacks.md``), probed every ``every_n_steps`` optimiser steps (default: the
    Trainer's ``logging_steps``) on a fixed probe batch. Two ways in (as TRL's callbacks):

    - ``trainer.add_callback(CosmologyCallback(..., trainer=trainer))``: the scalars are
      logged through ``trainer.log``, so they reach ``state.log_history`` and every
      ``report_to`` integration (TensorBoard beside ``train/loss`` as ``train/cosmology/...``,
      W&B, MLflow, ...); histograms, layout and figures go to the Trainer's TensorBoard writer
      (and figures to W&B's/MLflow's image API).
    - ``Trainer(callbacks=[CosmologyCallback(...)])``: transformers hands callbacks no Trainer,
      so this one uses what its hooks give: the scalars go to ``state.log_history`` and, when
      ``"tensorboard"`` is in ``args.report_to``, to a ``SummaryWriter`` of its own in the
      Trainer's TensorBoard run (same directory, same ``train/...`` tags); the other
      integrations get nothing from it, and one warning per run says so and names the fix.

    Neither way alters what the Trainer does (its control flags, logs, checkpoints). Every
    model input the collator produces (attention masks, token type ids) reaches the model on
    the probe batch. The callback's state (e-folds, history, first-probe basis) is saved in
    checkpoints (``trainer_state.json``, transformers' stateful-callback mechanism), so
    ``resume_from_checkpoint`` continues the same series.

    Only heavy-ball momentum SGD (``optimizers=(SGD/CosmoSGD, None)``) has a de Sitter dual;
    with the default AdamW only the NTK and mode tags appear, and the callback warns once.

    Args:
        loss: the per-sample loss of the logits (e.g. ``nn.CrossEntropyLoss()``); None skips
            the tags that need ℓ.
        every_n_steps: probe interval in optimiser steps; default ``args.logging_steps``.
        probe_batch: a dict of model inputs (and ``label_key``), one row per sample; default
            the first ``probe_size`` training examples, collated by the Trainer's collator.
        input_key, label_key: as `MonitorConfig`'s, with the defaults of a collator's batch
            (``"input_ids"``, ``"labels"``); every per-sample tensor of it goes to the model.
        output: as `MonitorConfig`'s; default the logits. A language model's have T·V
            components per sample: select a few, e.g.
            ``output=lambda out: out.logits[:, -1, :8]`` (with ``loss=None``).
        trainer: the ``transformers.Trainer`` this callback is added to, for logging through
            it (see above); None: the hooks' arguments only.

    Every other argument (``top_k``, ``probe_size``, ``log_figures_every_n_steps``,
    ``prefix``, ``verify_ntk``, ``ntk_method``, ``sketch_dim``, ``group``, ``history_size``)
    is the `cosmo_optim.monitor.MonitorConfig` option of that name, documented there once.
    ``distributed`` and ``train_batch_size`` are set from the Trainer (``torchrun``;
    ``per_device_train_batch_size`` × ``gradient_accumulation_steps``).

    Under DDP (``torchrun``) rank 0's probe batch is broadcast and each rank computes the
    kernel features of its shard of it (``empirical_ntk(distributed=True)``); FSDP and
    DeepSpeed, which shard the parameters, are refused.

    Raises:
        ImportError: ``transformers`` is not installed.
        ValueError: an invalid argument, a probe batch without ``input_key``, a ``trainer``
            that is not a ``transformers.Trainer`` or that does not run this callback.

    Example:
        >>> trainer = transformers.Trainer(model, args, train_dataset=data)  # doctest: +SKIP
        >>> callback = CosmologyCallback(every_n_steps=10, trainer=trainer)  # doctest: +SKIP
        >>> trainer.add_callback(callback)  # doctest: +SKIP
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
        ntk_method: str = "exact",
        sketch_dim: int | None = None,
        output: str | Callable[[Any], Tensor] | None = None,
        group: int = 0,
        history_size: int = 1000,
        trainer: Any = None,
    ) -> None:
        if not _HAVE_TRANSFORMERS:
            raise ImportError(
                "CosmologyCallback needs transformers. Fix: pip install 'cosmo-optim[hf]'."
            )
        if trainer is not None and not isinstance(trainer, transformers.Trainer):
            raise ValueError(
                f"Invalid trainer: {type(trainer).__name__}; it must be the transformers.Trainer "
                "the callback is added to (trainer.add_callback(CosmologyCallback(..., "
                "trainer=trainer))), or None."
            )
        self.config = MonitorConfig(
            loss, probe_size, top_k, every_n_steps, log_figures_every_n_steps,
            history_size=history_size, prefix=prefix, group=group,
            output=logits_of if output is None else output, verify_ntk=verify_ntk,
            ntk_method=ntk_method, sketch_dim=sketch_dim,
        )
        self.input_key, self.label_key, self.trainer = input_key, label_key, trainer
        self.probe_batch = None if probe_batch is None else self._rows(probe_batch)
        self.session = MonitorSession("CosmologyCallback")
        self.saved_state: dict[str, Any] | None = None  # from a checkpoint, until training starts
        self._writer: Any = None  # without a trainer: our SummaryWriter in its TensorBoard run

    tracker = property(lambda self: self.session.tracker,
                       doc="The run's CosmologyTracker (None before training starts).")

    def _rows(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return take_rows(batch, self.config.probe_size, self.input_key, self.label_key)

    # ----- transformers' stateful-callback mechanism (ExportableState) --------------------
    def state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` keeps: the tracker's state as JSON values."""
        saved = self.tracker.state_dict() if self.tracker is not None else self.saved_state
        return {"args": {}, "attributes": {"saved_state": to_json(saved)}}

    def _stored(self, state: Any) -> dict[str, Any] | None:
        """Our state in a resumed run's ``trainer_state.json`` (of several CosmologyCallbacks,
        the one of our prefix), else the rebuilt callback's ``saved_state``."""
        try:
            stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
            saved = [s.get("attributes", {}).get("saved_state") for s in (
                stored if isinstance(stored, list) else [stored] if stored else [])]
            if isinstance(stored, list):
                found = self.session.from_json(saved, self.config.prefix)
            else:
                found = from_json(saved[0]) if saved and saved[0] else None
            return found or (from_json(self.saved_state) if self.saved_state else None)
        except Exception as error:  # a state this version cannot decode: never blocks a resume
            warnings.warn(dropped_state_warning(error), UserWarning, stacklevel=3)
            return None

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
        distributed = _distributed(args)
        probe = self.session.shared_probe(  # one probe batch for every rank
            state.is_world_process_zero, lambda: self.probe_batch if self.probe_batch is not None
            else self._first_examples(kwargs["train_dataloader"]),
            None if distributed else lambda p: p)
        self._open_writer(args, state)
        config = self.config.with_interval(_logging_interval(args, state, self.config))
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.session.load_state_dict(self._stored(state))
        tracker = self.session.start(
            IndexedInputs(kwargs["model"], probe, self.label_key),
            dataclasses.replace(config, distributed=distributed, train_batch_size=per_step),
            probe_batch=(torch.arange(len(probe[self.input_key])), probe.get(self.label_key)),
        )
        # the Trainer's TensorBoardCallback writes our scalars as train/<tag> (rewrite_logs):
        # the layout, histograms and figures follow, or the dashboard would match nothing
        tracker.extras.prefix = "train/" + self.config.prefix
        if kwargs.get("optimizer") is not None:
            tracker.observe(kwargs["optimizer"])
        self._log(args, state, self.session.first_probe(state.global_step), 0)
        if tracker.last_step < state.global_step:
            tracker.last_step = state.global_step

    def _first_examples(self, loader: Any) -> dict[str, Tensor]:
        with torch.random.fork_rng():  # a collator may draw random numbers (MLM masking)
            size = min(self.config.probe_size, len(loader.dataset))
            return self._rows(loader.collate_fn([loader.dataset[i] for i in range(size)]))

    def _open_writer(self, args: Any, state: Any) -> None:
        """Check ``trainer=``; without one, open our writer in the Trainer's TensorBoard run
        (if it reports there) and warn once about the integrations we cannot reach."""
        if self.trainer is not None:
            if self not in self.trainer.callback_handler.callbacks:
                raise ValueError(
                    "CosmologyCallback: trainer= is not the Trainer running this callback. "
                    "Fix: trainer.add_callback(CosmologyCallback(..., trainer=trainer)) on the "
                    "Trainer you train."
                )
            return
        report_to = list(args.report_to or [])
        if not state.is_world_process_zero:
            return
        if "tensorboard" in report_to and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=_tensorboard_dir(args))
        others = [name for name in report_to if name not in ("tensorboard", "none")]
        if others:
            figures = self.config.log_figures_every_n_steps is not None
            self.session.figures_warned = True  # this warning names the figures too
            warnings.warn(_unreached_warning(others, figures), UserWarning, stacklevel=3)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After each optimiser step: probe when due and log."""
        if self.tracker is not None:
            self._log(args, state, self.tracker.step(state.global_step), state.global_step)

    def _log(self, args: Any, state: Any, metrics: dict[str, float] | None, step: int) -> None:
        self.session.write(lambda: self._writers(args) if state.is_world_process_zero else [],
                           metrics, step, lambda m: self._scalars(state, m, step))

    def _scalars(self, state: Any, metrics: dict[str, float], step: int) -> None:
        if self.trainer is not None:
            control = self.trainer.control
            flags = control.should_log, control.should_save, control.should_evaluate
            # the base class's log: a subclass's log() (TRL's) may flush metrics it gathers,
            # which belong to the Trainer's own rows. It resets should_log: restored below,
            # also when an integration raises in it
            try:
                transformers.Trainer.log(self.trainer, dict(metrics))
            finally:
                control = self.trainer.control
                control.should_log, control.should_save, control.should_evaluate = flags
            return
        state.log_history.append({**metrics, "step": step})  # the hooks' state, and our
        for tag, value in metrics.items() if self._writer is not None else ():  # writer
            self._writer.add_scalar("train/" + tag, value, step)  # as rewrite_logs names it

    def _writers(self, args: Any) -> list[Any]:
        """With a trainer: its TensorBoard writer (everything) and the image APIs of its other
        ``report_to`` integrations (W&B, MLflow: figures); without: our writer, if any."""
        nothing = f"the Trainer (report_to={args.report_to!r})"
        if self.trainer is None:
            return self.session.targets([self._writer] if self._writer else [], lambda w: w,
                                        nothing=nothing)
        reporting = tuple(transformers.integrations.get_reporting_integration_callbacks(
            args.report_to))
        return self.session.targets(
            [c for c in self.trainer.callback_handler.callbacks if isinstance(c, reporting)],
            lambda c: getattr(c, "tb_writer", None) if type(c).__name__ == (
                "TensorBoardCallback") else None, nothing=nothing)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Draw the final figures (if enabled) to the writers of the run's last probe (the
        Trainer's TensorBoard run is reopened: its callback closed it just before)."""
        if self.tracker is None:
            return
        writers = self.session.finish() if state.is_world_process_zero else []
        self.tracker.guard.write(state.global_step, lambda: _close_writers([*writers,
                                                                            self._writer]))
        self._writer = None
