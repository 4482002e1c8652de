"""`RunState`: what one reading of a run hands to the next, and what a checkpoint keeps of it.

The tracker decides when to probe; this holds what it carries between probes (the probe
batch, the step counter, the e-folds (T9), the outputs of the step before a probe (for ḟ,
T2), the first and the latest probe, the history) and turns it into plain dicts and tensors
and back, so that a resumed run continues its series without gaps or duplicates.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import torch
from torch import Tensor, nn

from cosmo_optim.dual import FLRWDual
from cosmo_optim.dual.linearised import WeightSnapshot
from cosmo_optim.monitor.readout import ReadingResult, RunSoFar
from cosmo_optim.monitor.records import LastReading, Reading, Reference, as_state

__all__ = ["STATE_VERSION", "RunState", "dropped_state_warning"]

#: The layout of `RunState.state_dict` (its ``"version"``). 1: the states written before it
#: had a version (read as they are); 2: with the version and the count of failed readings.
#: A state of a later version, or one that cannot be read, is dropped with one warning.
STATE_VERSION: Final = 2


class RunState:
    """The state a run carries from probe to probe (see the module docstring).

    Args:
        history_size: probes kept in `history` (oldest dropped first).
    """

    def __init__(self, history_size: int) -> None:
        self.last_step = -1  # the last optimiser step seen
        self.efolds = 0.0  # accumulated Σ (1 − β_n)/3 (T9)
        self.nonfinite = 0  # probes skipped as non-finite
        self.previous_outputs: tuple[int, Tensor] | None = None  # (step, f) before a probe
        self.reference: Reference | None = None  # the first probe
        self.last: LastReading | None = None  # the latest probe
        self.history: deque[Reading] = deque(maxlen=history_size)
        self.dual: FLRWDual | None = None  # the latest probe's read-out
        # the latest reading's trainable weights, on the host: the next reading's θ_ref (T12);
        # not checkpointed (a model's worth of bytes), so a resumed run compares from its
        # second reading on
        self.snapshot: WeightSnapshot | None = None
        self.inputs: Tensor | None = None  # the probe batch
        self.targets: Tensor | None = None

    def so_far(self, step: int, failed: int = 0) -> RunSoFar:
        """What a probe at `step` reads from the earlier ones (`failed`: readings that raised)."""
        return RunSoFar(step, self.efolds, self.nonfinite, self.previous_outputs,
                        self.reference, self.last, failed)

    def absorb(self, result: ReadingResult, snapshot: WeightSnapshot | None) -> bool:
        """Keep a reading's result, and `snapshot` (the weights it was taken at) as the next
        reading's θ_ref (T12); False (and one more non-finite count) if it was skipped."""
        self.reference, self.last = result.reference, result.last
        if result.record is None:
            self.nonfinite += 1
            self.snapshot = None  # nothing is compared across a skipped reading
            return False
        self.history.append(result.record)
        self.dual = result.dual
        self.snapshot = snapshot
        return True

    def resume_from(self, model: nn.Module, step: int, outputs: Callable[[], Tensor]) -> None:
        """After a resume at optimiser step `step`: if the run stopped right after a reading at
        that step, `model`'s weights are that reading's, and they become the next reading's
        θ_ref (T12), so its residual is not lost (the weights are not in the state). Checked
        by the model's `outputs` on the probe batch, which must be that reading's: a model
        whose weights are loaded after `attach` would be taken for them (one warning)."""
        last = self.history[-1].step if self.history else None
        if self.snapshot is not None or self.last is None or not last == step == self.last_step:
            return
        now = outputs()
        if now.shape == self.last.outputs.shape and torch.allclose(
                now, self.last.outputs.to(now), rtol=1e-4, atol=1e-6 * float(now.abs().max())):
            self.snapshot = WeightSnapshot.take(model, step)
            return
        warnings.warn(
            f"CosmologyTracker: resumed at step {step}, but the model's outputs on the probe "
            f"batch are not those of the reading at step {step}: were its weights loaded after "
            "attach()? The next reading has no residual (T12). Fix: load the model's state "
            "before CosmologyTracker.attach (or load_state_dict) on a resume.",
            UserWarning, stacklevel=4,
        )

    def state_dict(self) -> dict[str, Any]:
        """Counters, history, first and latest probe: plain dicts and tensors."""
        return {
            "version": STATE_VERSION,
            "last_step": self.last_step, "efolds": self.efolds, "nonfinite": self.nonfinite,
            "history": [r.as_dict() for r in self.history],
            "previous_outputs": self.previous_outputs,
            "reference": as_state(self.reference), "last": as_state(self.last),
            "inputs": self.inputs, "targets": self.targets,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> bool:
        """Restore `state_dict()` (extra keys, such as the tracker's, are ignored); whether it
        was. A state of a later `STATE_VERSION`, or one whose contents cannot be read, is
        dropped with one warning, all but its step count and e-folds where those read: a
        resumed run then starts a new series at its next reading, its steps and e-folds
        continuing, instead of failing. A dict that is no tracker state at all is a
        ValueError."""
        missing = {"last_step", "history", "reference", "last"} - set(state)
        if missing:
            raise ValueError(
                f"Invalid tracker state: missing {sorted(missing)}; pass the dict returned by "
                "CosmologyTracker.state_dict()."
            )
        version = state.get("version", 1)
        try:
            if not isinstance(version, int) or not 1 <= version <= STATE_VERSION:
                raise ValueError(f"state version {version!r}; this cosmo-optim reads versions "
                                 f"1 to {STATE_VERSION}")
            loaded = RunState(self.history.maxlen or 1)
            loaded.inputs, loaded.targets = self.inputs, self.targets
            loaded._load(state)
        except Exception as error:  # whatever an unreadable state raises: one warning
            warnings.warn(dropped_state_warning(error), UserWarning, stacklevel=3)
            with contextlib.suppress(TypeError, ValueError):
                self.last_step = int(state["last_step"])
                self.efolds = float(state.get("efolds", 0.0))
            return False
        vars(self).update(vars(loaded))
        return True

    def _load(self, state: Mapping[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.efolds = float(state.get("efolds", 0.0))
        self.nonfinite = int(state.get("nonfinite", 0))
        self.history.clear()
        self.history.extend(Reading.from_dict(r) for r in state["history"])
        self.previous_outputs = state.get("previous_outputs")
        if state.get("inputs") is not None:
            self.inputs, self.targets = state["inputs"], state.get("targets")
        ref, last = state["reference"], state["last"]
        self.reference = None if ref is None else Reference(  # no sketch_dim before sketches
            ref["kernel"], ref["eigenvectors"], int(ref.get("sketch_dim", 0)))
        self.last = None if last is None else LastReading(
            last["step"], last["eigenvectors"], last["outputs"], last.get("prediction"),
            last.get("kernel"))


def dropped_state_warning(error: Exception) -> str:
    """The one warning of a checkpoint's monitor state that is dropped because of `error`."""
    first = (str(error).strip().splitlines() or [""])[0]
    return (
        f"CosmologyTracker: the monitor's state in this checkpoint cannot be read "
        f"({type(error).__name__}: {first}); it is dropped (its step count and e-folds are "
        "kept where they read), the monitor starts a new series at its next reading, and the "
        "run resumes unchanged. Fix: resume with the cosmo-optim version that wrote the "
        "checkpoint to continue the series."
    )
