"""Typed records of the monitor: one reading's results, and the state carried between readings.

`Reading` is what `CosmologyTracker.history` holds. It also answers ``record["step"]``,
``record["scalars"]`` etc. (the dict form of earlier versions), and `as_dict`/`from_dict`
convert it for checkpoints, which keep plain dicts and tensors only (loadable with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LastReading", "PredictedModes", "Reading", "Reference", "as_state", "from_json", "to_json",
]


def __getattr__(name: str) -> Any:
    if name == "ProbeRecord":  # the former name of `Reading`
        from cosmo_optim.monitor.names import warn_renamed

        warn_renamed("cosmo_optim.monitor.ProbeRecord", "cosmo_optim.monitor.Reading")
        return Reading
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PredictedModes:
    """The discrete NTK map's prediction (T10) from one reading to the next: the optimiser
    steps and the mode amplitudes (P, k) in the basis of the first reading."""

    steps: list[int]
    amplitudes: Tensor


@dataclass(frozen=True)
class Reading:
    """One reading: its step, logged scalars (prefixed tags), NTK eigenvalues λ_k (k,), mean
    field φ̄ (C,), mode amplitudes in the first reading's basis (k,), the forecast to the next
    reading (None without a dual or when the map diverges, T10), which kernel they came from
    (`sketch_dim`: k of the sketched kernel, 0 for the exact one), and the amplitudes the
    previous reading's frozen kernel predicts for this step under the force training applied
    (`linearised_amplitudes`, the linearised outputs of T12 in the first reading's basis;
    None at a first reading)."""

    step: int
    scalars: dict[str, float]
    eigenvalues: Tensor
    mean_field: Tensor
    initial_amplitudes: Tensor
    prediction: PredictedModes | None = None
    sketch_dim: int = 0
    linearised_amplitudes: Tensor | None = None

    def __getitem__(self, key: str) -> Any:
        """``record["scalars"]``: the dict access of earlier versions."""
        if key not in self.keys():
            raise KeyError(key)
        if key == "prediction" and self.prediction is not None:
            return {"steps": self.prediction.steps, "amplitudes": self.prediction.amplitudes}
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``record.get(key)`` as for a dict."""
        return self[key] if key in self.keys() else default

    def keys(self) -> list[str]:
        """The field names."""
        return [f.name for f in fields(self)]

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts and tensors (for a checkpoint)."""
        return {key: self[key] for key in self.keys()}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | Reading) -> Reading:
        """Inverse of `as_dict` (also accepts a record)."""
        if isinstance(record, Reading):
            return record
        values = {key: record[key] for key in ("step", "scalars", "eigenvalues", "mean_field",
                                               "initial_amplitudes")}
        pred = record.get("prediction")
        return cls(**values, prediction=None if pred is None else PredictedModes(**pred),
                   sketch_dim=int(record.get("sketch_dim", 0)),  # absent before sketches
                   linearised_amplitudes=record.get("linearised_amplitudes"))


@dataclass(frozen=True)
class Reference:
    """The first reading: the NTK (N·C, N·C) and its top eigenvectors (N·C, k), against which
    kernel drift, basis rotation and initial-basis amplitudes are measured (T4, T7), and
    which kernel it is (`sketch_dim`: k of the sketch, 0 exact; later readings use the same)."""

    kernel: Tensor
    eigenvectors: Tensor
    sketch_dim: int = 0


@dataclass(frozen=True)
class LastReading:
    """The latest reading: its top eigenvectors (the next reading's signs follow them),
    outputs f, the outputs it forecasts at step ``prediction[0]`` (T10), if any, and its
    kernel (N·C, N·C), from which the next reading measures how far the kernel moved (T12;
    None in states saved before it was kept)."""

    step: int
    eigenvectors: Tensor
    outputs: Tensor
    prediction: tuple[int, Tensor] | None = None
    kernel: Tensor | None = None


def as_state(value: Reference | LastReading | None) -> dict[str, Any] | None:
    """A reference or last reading as a plain dict (None stays None)."""
    return None if value is None else {f.name: getattr(value, f.name) for f in fields(value)}


def to_json(value: Any) -> Any:
    """Plain JSON values from a tracker state: tensors (their bytes in base64, ≈ 1.4 bytes of
    text per byte, so a checkpoint's (N·C)² reference kernel stays compact) and tuples tagged
    so that `from_json` restores them exactly; floats round-trip by their repr."""
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return {"__tensor__": base64.b64encode(raw).decode("ascii"),
                "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(value: Any) -> Any:
    """Inverse of `to_json` (also reads the nested lists of values earlier versions wrote)."""
    if isinstance(value, Mapping):
        if "__tensor__" in value:
            dtype, shape, data = getattr(torch, value["dtype"]), value["shape"], value["__tensor__"]
            if not isinstance(data, str):  # written before tensors were base64
                return torch.tensor(data, dtype=dtype).reshape(shape)
            raw = bytearray(base64.b64decode(data))
            if not raw:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).clone()
        if "__tuple__" in value:
            return tuple(from_json(v) for v in value["__tuple__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
