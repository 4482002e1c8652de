"""A probe batch of several model inputs (a collator's dict), probed through sample indices.

A Hugging Face collator yields ``{"input_ids", "attention_mask", "token_type_ids",
"labels", ...}``, one row per sample, and the model takes them all as keywords. The NTK engine
needs a map from N inputs to N outputs, so `IndexedInputs` makes one: sample indices (N,) →
``model(**rows)``. `take_rows` checks and copies such a dict; `logits_of` picks the logits of
a ``ModelOutput``, dict or tuple. Framework-free: nothing here imports ``transformers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from cosmo_optim.monitor.batches import device_of, to_model

__all__ = ["IndexedInputs", "logits_of", "take_rows"]


class IndexedInputs(nn.Module):
    """The model on probe samples picked by index: ``model(**batch[idx])``.

    Every tensor of `batch` but the targets (`label_key`) goes to the model, row-aligned with
    the samples (cast to the model's device and floating dtype), so the NTK engine sees a map
    from sample indices (N,) to outputs (N, ...)."""

    def __init__(self, model: nn.Module, batch: Mapping[str, Tensor], label_key: str) -> None:
        super().__init__()
        self.model = model
        self.batch = {k: v for k, v in batch.items() if k != label_key}

    def forward(self, index: Tensor) -> Any:
        rows = index.long()
        return self.model(**{k: to_model(self.model, v)[rows.to(device_of(self.model))]
                             for k, v in self.batch.items()})


def logits_of(out: Any) -> Tensor:
    """``out.logits`` / ``out["logits"]`` of a ModelOutput or dict, else ``out[0]``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        return out["logits"]
    return out[0]


def take_rows(batch: Mapping[str, Any], size: int, input_key: str,
              label_key: str) -> dict[str, Tensor]:
    """The first `size` rows of every per-sample tensor of `batch` (copied to the CPU): those
    with as many rows as ``batch[input_key]``; the targets checked against that length."""
    if input_key not in batch:
        raise ValueError(
            f"Invalid probe batch: no {input_key!r} key (keys {sorted(batch)}). "
            "Fix: pass input_key=... naming a model input with one row per sample."
        )
    rows, labels = len(batch[input_key]), batch.get(label_key)
    if isinstance(labels, Tensor) and labels.dim() > 0 and len(labels) != rows:
        raise ValueError(
            f"Invalid probe batch: {len(labels)} {label_key!r} for {rows} "
            f"{input_key!r} rows; the loss needs one target per sample. Fix: one "
            f"row of {label_key!r} per sample, or label_key=... naming the targets."
        )
    n = min(rows, size)
    return {k: v[:n].detach().cpu().clone() for k, v in batch.items()
            if isinstance(v, Tensor) and v.dim() > 0 and len(v) == rows}
