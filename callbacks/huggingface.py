"""`CosmologyCallback`: the monitor as a Hugging Face ``transformers`` `TrainerCallback` (T3–T10).

A thin adaptor over `cosmo_optim.monitor.CosmologyTracker`. Importable without
``transformers`` (for docs and introspection); constructing the callback then raises an
ImportError naming the extra to install (``pip install cosmo-optim[hf]``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cosmo_optim.monitor import CosmologyTracker, MonitorConfig
from cosmo_optim.monitor.sinks import Sinks

_TrainerCallback: Any
try:
    import transformers

    _TrainerCallback = transformers.TrainerCallback
    _HAVE_TRANSFORMERS = True
except ImportError:  # the optional extra is absent
    _TrainerCallback = object
    _HAVE_TRANSFORMERS = False

__all__ = ["CosmologyCallback"]


class _Outputs(nn.Module):
    """``model(**{input_key: x})`` as a tensor-to-tensor module (logits), for the NTK engine."""

    def __init__(self, model: nn.Module, input_key: str) -> None:
        super().__init__()
        self.model = model
        self.input_key = input_key

    def forward(self, inputs: Tensor) -> Tensor:
        out: Any = self.model(**{self.input_key: inputs})
        if isinstance(out, Mapping) or hasattr(out, "keys"):
            return out["logits"]
        return out[0] if isinstance(out, (tuple, list)) else out


class CosmologyCallback(_TrainerCallback):
    """Log the universe dual to a ``transformers.Trainer`` run (docs/theory.md T3–T10).

    Same read-out and tags as `cosmo_optim.callbacks.CosmologyMonitor` (see
    ``docs/callbacks.md``), probed every ``every_n_steps`` optimiser steps (default: the
    Trainer's ``logging_steps``) on a fixed probe batch. The model is evaluated as
    ``model(**{input_key: inputs}).logits``; other keys (attention masks) are not passed, so
    use an unpadded probe batch. Only a momentum-SGD optimiser (``optimizers=(SGD/CosmoSGD,
    None)``) has a de Sitter dual; with the default AdamW only the NTK and mode tags appear.
    Scalars go to TensorBoard in ``args.logging_dir`` when ``"tensorboard"`` is in
    ``args.report_to`` (main process only), and to ``sink`` if given.

    Args:
        loss: the per-sample loss of the logits (e.g. ``nn.CrossEntropyLoss()``); None skips
            the tags that need ℓ.
        every_n_steps: probe interval in optimiser steps; default ``args.logging_steps``.
        top_k: modes to follow.
        probe_batch: a dict with ``input_key`` (and ``label_key``) tensors; default the first
            ``probe_size`` training examples, collated by the Trainer's data collator.
        probe_size: at most this many probe samples.
        input_key: the model input holding the samples (``"input_ids"``).
        label_key: the targets' key (``"labels"``).
        log_figures_every_n_steps: draw figures at these steps and once more at the end;
            None (default) draws none (they cost ≈ 0.2 s, more than a dozen probes).
        prefix: prepended to every tag.
        sink: without TensorBoard reporting, a ``SummaryWriter`` or ``sink(metrics, step)``.

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
        sink: Any = None,
    ) -> None:
        if not _HAVE_TRANSFORMERS:
            raise ImportError(
                "CosmologyCallback needs transformers. Fix: pip install 'cosmo-optim[hf]'."
            )
        self.config = MonitorConfig(
            loss, probe_size, top_k, every_n_steps, log_figures_every_n_steps, prefix=prefix
        )
        Sinks(sink)  # validate it now
        self.sink = sink
        self.input_key, self.label_key = input_key, label_key
        self.probe_batch = None if probe_batch is None else self._probe(probe_batch)
        self.tracker: CosmologyTracker | None = None
        self._writer: Any = None

    def _probe(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        if self.input_key not in batch:
            raise ValueError(
                f"Invalid probe batch: no {self.input_key!r} key (keys {sorted(batch)}). "
                "Fix: pass input_key=... naming the model input that holds the samples."
            )
        return batch[self.input_key], batch.get(self.label_key)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Build the tracker, take the probe batch, and probe the initial state (step 0)."""
        model, optimizer = kwargs["model"], kwargs.get("optimizer")
        probe = self.probe_batch
        if probe is None:
            loader = kwargs["train_dataloader"]
            with torch.random.fork_rng():  # a collator may draw random numbers (MLM masking)
                examples = [loader.dataset[i] for i in range(
                    min(self.config.probe_size, len(loader.dataset)))]
                probe = self._probe(loader.collate_fn(examples))
        sink = self.sink
        if state.is_world_process_zero and "tensorboard" in (args.report_to or []):
            from torch.utils.tensorboard import SummaryWriter

            log_dir = (
                getattr(args, "logging_dir", None)  # transformers < 5
                or os.environ.get("TENSORBOARD_LOGGING_DIR")  # transformers ≥ 5
                or os.path.join(args.output_dir, "runs")
            )
            sink = self._writer = SummaryWriter(log_dir)
        self.tracker = CosmologyTracker.from_config(
            _Outputs(model, self.input_key),
            self.config.with_interval(max(int(args.logging_steps), 1)),
            optimizer=optimizer,
            probe_batch=tuple(t.cpu() if t is not None else None for t in probe),
            sink=sink if state.is_world_process_zero else None,
        )
        if state.global_step == 0:
            self.tracker.step(0)
        else:
            self.tracker.last_step = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After each optimiser step: probe when due."""
        if self.tracker is not None:
            if self.tracker.optimizer is None and kwargs.get("optimizer") is not None:
                self.tracker.optimizer = kwargs["optimizer"]
            self.tracker.step(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Draw the final figures (if enabled) and close the TensorBoard writer."""
        if self.tracker is None:
            return
        if self._writer is not None:
            step = self.tracker.final_figures_step()
            if step is not None:
                self.tracker.write_figures(self._writer, step)
            self._writer.close()
            self._writer = None
