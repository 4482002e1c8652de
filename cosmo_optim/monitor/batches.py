"""The probe batch as users have it: Tensors, NumPy arrays, tuples and dict batches.

`take_probe_batch` turns what a data loader yields (a Tensor, a sequence ``(inputs, targets,
...)``, a dict such as a Hugging Face collator's or a Lightning module's, of Tensors or NumPy
arrays) into the probe's ``(inputs, targets)``; `to_model` casts the inputs to the model's
device and floating dtype, so a float64 batch probes a float32 model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "INPUT_KEYS", "LABEL_KEYS", "batch_size", "device_of", "take_probe_batch", "to_model",
]

#: Keys of a dict batch taken as the inputs when no ``input_key`` is given (first present).
INPUT_KEYS = ("inputs", "input", "x", "input_ids", "pixel_values", "images", "image",
              "features")
#: Keys of a dict batch taken as the targets when no ``label_key`` is given (first present).
LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def _tensor(value: Any) -> Any:
    """A NumPy array as a Tensor (sharing memory; `take_probe_batch` copies); else as is."""
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _from_mapping(batch: Mapping[str, Any], input_key: str | None,
                  label_key: str | None) -> tuple[Any, Any]:
    """(inputs, targets) of a dict batch: the given keys, else the first of `INPUT_KEYS` and
    of `LABEL_KEYS` present (no targets if none is)."""
    keys = sorted(map(str, batch))
    found = input_key or next((k for k in INPUT_KEYS if k in batch), None)
    if found is None or found not in batch:
        raise ValueError(
            f"Cannot find the inputs of a dict batch with keys {keys}: "
            + (f"no key {input_key!r}. " if input_key else
               f"none of the default input keys {list(INPUT_KEYS)}. ")
            + "Fix: pass input_key='<the key the model's forward takes>' (and label_key=... "
            "for the targets), or probe_batch=(inputs, targets)."
        )
    if label_key is not None and label_key not in batch:
        raise ValueError(
            f"Invalid label_key: {label_key!r} is not a key of the batch (keys {keys}). Fix: "
            "name the targets' key, or label_key=None to take the first of "
            f"{list(LABEL_KEYS)} present."
        )
    target = label_key or next((k for k in LABEL_KEYS if k in batch and k != found), None)
    return batch[found], None if target is None else batch[target]


def _split(batch: Any, input_key: str | None, label_key: str | None) -> tuple[Tensor, Any]:
    """(inputs, targets) of a batch, NumPy arrays as Tensors; the inputs checked."""
    if isinstance(batch, Mapping):
        inputs, targets = _from_mapping(batch, input_key, label_key)
    elif isinstance(batch, (tuple, list)) and batch:
        inputs, targets = batch[0], batch[1] if len(batch) > 1 else None
    else:
        inputs, targets = batch, None
    inputs, targets = _tensor(inputs), _tensor(targets)
    if not isinstance(inputs, Tensor):
        raise ValueError(
            f"Cannot take a probe batch from a batch of type {type(batch).__name__} (inputs "
            f"of type {type(inputs).__name__}); it must be a Tensor or NumPy array, a sequence "
            "(inputs, targets, ...) or a dict of them. Fix: pass probe_batch=(inputs, targets) "
            "explicitly."
        )
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"Invalid probe batch: inputs of shape {tuple(inputs.shape)} are empty.")
    return inputs, targets


def batch_size(batch: Any, *, input_key: str | None = None) -> int:
    """The number of samples of a training batch (its inputs' first dimension), not copied."""
    return int(_split(batch, input_key, None)[0].shape[0])


def take_probe_batch(batch: Any, size: int, *, input_key: str | None = None,
                     label_key: str | None = None) -> tuple[Tensor, Tensor | None]:
    """The first `size` samples of a batch (copied): a Tensor or NumPy array of inputs, a
    sequence (inputs, targets, ...), or a dict batch (keys: `input_key`/`label_key`, else the
    first of `INPUT_KEYS`/`LABEL_KEYS` present).

    Raises:
        ValueError: for a batch of another kind, empty inputs, or targets whose first
            dimension is not the inputs' (naming both lengths and the fix).
    """
    inputs, targets = _split(batch, input_key, label_key)
    if not isinstance(targets, Tensor) or targets.dim() == 0:
        targets = None  # no per-sample targets (a batch index, a scalar weight, ...)
    elif targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"Invalid probe batch: {targets.shape[0]} targets for {inputs.shape[0]} inputs "
            f"(shapes {tuple(targets.shape)} and {tuple(inputs.shape)}); the loss needs one "
            "target per sample. Fix: pass probe_batch=(inputs, targets) with one row each, or "
            "probe_batch=inputs (and loss=None) to probe without targets."
        )
    inputs = inputs[:size].detach().clone()
    return inputs, None if targets is None else targets[:size].detach().clone()


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_model(model: nn.Module, inputs: Tensor) -> Tensor:
    """`inputs` on the model's device, and in its dtype if both are floating point (a float64
    batch into a float32 model); integer inputs (token ids, indices) keep their dtype."""
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    device = p.device if p is not None else torch.device("cpu")
    if p is not None and inputs.is_floating_point() and inputs.dtype != p.dtype:
        return inputs.to(device=device, dtype=p.dtype)
    return inputs.to(device)
