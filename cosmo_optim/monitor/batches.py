"""The probe batch as users have it: Tensors, NumPy arrays, tuples and dict batches.

`take_probe_batch` turns what a data loader yields (a Tensor, a sequence ``(inputs, targets,
...)``, a dict such as a Hugging Face collator's or a Lightning module's, of Tensors or NumPy
arrays) into the probe's ``(inputs, targets)``, the inputs a `cosmo_optim.ntk.ModelInputs`:
the batch as the model is called with it (one positional tensor, or, for a collator's dict,
every per-sample tensor but the targets as keyword arguments). At each reading the inputs go
to the model's device and floating dtype (`ModelInputs.for_model`: a float64 batch reaches a
float32 model in float32; token ids keep their dtype).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim.ntk import ModelInputs

__all__ = [
    "INPUT_KEYS", "LABEL_KEYS", "batch_size", "device_of", "first_samples", "take_probe_batch",
]

#: Keys of a dict batch taken as the inputs when no ``input_key`` is given (first present).
INPUT_KEYS = ("inputs", "input", "x", "input_ids", "pixel_values", "images", "image",
              "features")
#: Keys of a dict batch taken as the targets when no ``label_key`` is given (first present).
LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def _tensor(value: Any) -> Any:
    """A NumPy array as a Tensor (sharing memory; `take_probe_batch` copies); else as is."""
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _keys(batch: Mapping[str, Any], input_key: str | None, label_key: str | None,
          optional: bool = False) -> tuple[str, str | None]:
    """The inputs' and the targets' keys of a dict batch: the given ones, else the first of
    `INPUT_KEYS` and of `LABEL_KEYS` present (no targets if none is, nor, when `optional`,
    if `label_key` is absent: a collator's batch without labels)."""
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
        if optional:
            return found, None
        raise ValueError(
            f"Invalid label_key: {label_key!r} is not a key of the batch (keys {keys}). Fix: "
            "name the targets' key, or label_key=None to take the first of "
            f"{list(LABEL_KEYS)} present."
        )
    return found, label_key or next((k for k in LABEL_KEYS if k in batch and k != found), None)


def _split(batch: Any, input_key: str | None, label_key: str | None,
           keywords: bool) -> tuple[Any, Any, str, str | None]:
    """(inputs, targets, the inputs' key and the targets' key (None: not a dict)) of a batch."""
    if isinstance(batch, Mapping):
        found, target = _keys(batch, input_key, label_key, optional=keywords)
        inputs: Any = _tensor(batch[found])
        if keywords and isinstance(inputs, Tensor) and inputs.dim() > 0:
            rows = len(inputs)  # the collator's per-sample tensors, as the model takes them
            inputs = {k: _tensor(v) for k, v in batch.items() if k != target and isinstance(
                _tensor(v), Tensor) and _tensor(v).dim() > 0 and len(v) == rows}
        return inputs, None if target is None else _tensor(batch[target]), found, target
    if isinstance(batch, (tuple, list)) and batch:
        return _tensor(batch[0]), _tensor(batch[1]) if len(batch) > 1 else None, "", None
    return _tensor(batch), None, "", None


def _model_inputs(inputs: Any, batch: Any) -> ModelInputs:
    if isinstance(inputs, (ModelInputs, Mapping)) or (
            isinstance(inputs, Tensor) and inputs.dim() > 0 and inputs.shape[0] > 0):
        return ModelInputs(inputs)
    if isinstance(inputs, Tensor):
        raise ValueError(f"Invalid probe batch: inputs of shape {tuple(inputs.shape)} are empty.")
    raise ValueError(
        f"Cannot take a probe batch from a batch of type {type(batch).__name__} (inputs of "
        f"type {type(inputs).__name__}); it must be a Tensor or NumPy array, a sequence "
        "(inputs, targets, ...), a dict of them or a cosmo_optim.ntk.ModelInputs. Fix: pass "
        "probe_batch=(inputs, targets) explicitly."
    )


def batch_size(batch: Any, *, input_key: str | None = None) -> int:
    """The number of samples of a training batch (its inputs' first dimension), not copied."""
    return len(_model_inputs(_split(batch, input_key, None, False)[0], batch))


def take_probe_batch(batch: Any, size: int, *, input_key: str | None = None,
                     label_key: str | None = None,
                     keywords: bool = False) -> tuple[ModelInputs, Tensor | None]:
    """The first `size` samples of a batch, copied to the CPU: inputs as the model takes them
    (a `ModelInputs`) and targets (None without per-sample targets).

    `batch` is a Tensor or NumPy array of inputs, a sequence (inputs, targets, ...) whose
    inputs may be a `ModelInputs`, or a dict batch (keys: `input_key`/`label_key`, else the
    first of `INPUT_KEYS`/`LABEL_KEYS` present). A dict's inputs go to the model as one
    positional tensor, or with `keywords` (a Hugging Face collator's batch) every per-sample
    tensor of it but the targets as keyword arguments.

    Raises:
        ValueError: for a batch of another kind, empty inputs, or targets whose first
            dimension is not the inputs' (naming both lengths and the fix).
    """
    inputs, targets, name, target = _split(batch, input_key, label_key, keywords)
    x = _model_inputs(inputs, batch)
    if not isinstance(targets, Tensor) or targets.dim() == 0:
        targets = None  # no per-sample targets (a batch index, a scalar weight, ...)
    elif targets.shape[0] != len(x):
        fix = (f"one row of {target!r} per sample, or label_key=... naming the targets" if (
            target) else "pass probe_batch=(inputs, targets) with one row each, or "
            "probe_batch=inputs (and loss=None) to probe without targets")
        what = (f"{targets.shape[0]} {target!r} for {len(x)} {name!r} rows" if target else
                f"{targets.shape[0]} targets for {len(x)} inputs")
        raise ValueError(
            f"Invalid probe batch: {what} (shapes {tuple(targets.shape)} and "
            f"{[tuple(t.shape) for t in x.batched()]}); the loss needs one target per sample. "
            f"Fix: {fix}."
        )
    x = x[:size].to("cpu").clone()
    return x, None if targets is None else targets[:size].detach().to("cpu").clone()


def first_samples(loader: Any, size: int, *, iterate: bool = False) -> Callable[[], Any] | None:
    """How to take the first `size` samples of a data loader's data set, collated as its
    batches are: the same samples on any number of processes, whatever the sampler and its
    shuffling. A map-style data set is indexed 0, 1, ...; an iterable one is read from a fresh
    iterator with `iterate` (else None, as for a loader without a data set or automatic
    batching: the caller then takes the probe batch from the training batches)."""
    dataset, collate = getattr(loader, "dataset", None), getattr(loader, "collate_fn", None)
    if dataset is None or collate is None or getattr(loader, "batch_sampler", None) is None:
        return None
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return (lambda: collate(list(itertools.islice(iter(dataset), size)))) if iterate else None
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        return None
    return lambda: collate([dataset[i] for i in range(min(size, len(dataset)))])


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
