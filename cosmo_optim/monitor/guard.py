"""Fail fast, then fail soft: what a reading that raises does to a training run.

Until the run has started (its first reading taken and written, then one more optimiser step)
every error is raised as it is: a model the kernel is undefined on, a loss that does not fit
the outputs, a sink that cannot be written are configuration errors, named with their fix
before any training time is spent. From then on no exception of the monitor reaches the
training loop (`KeyboardInterrupt` and `SystemExit` do: they are not `Exception`s):

- a reading that raises (kernel, spectrum, dual, linearisation) is skipped: one warning per
  cause names it and the fix, ``cosmology/failed_readings`` counts it at its step, the TEXT
  card ``cosmology/failures`` gives the step and the cause, and the traceback goes to the
  ``cosmo_optim.monitor`` logger (level INFO);
- on running out of memory (`torch.OutOfMemoryError`, or a RuntimeError saying "out of
  memory") what the reading held is freed, CUDA's cached blocks too, and the reading is
  retried once, lean (`cosmo_optim.monitor.reading.LEAN_SHARE`: the probe batch in chunks
  and, on CUDA, the kernel under a smaller memory budget); if that fails as well it is
  skipped;
- after `MAX_CONSECUTIVE_FAILURES` skipped readings in a row the monitor takes no more readings
  in this run, and says so once; the e-folds still count, and a resumed run reads again;
- a sink, logger or figure that raises loses that write only (the reading stays in the
  history); it never stops the readings;
- under DDP (``config.distributed``) the ranks agree on every attempt's outcome with one
  all-reduce of a failure code, and once more between the local forward and the kernel's
  collectives (`cosmo_optim.monitor.reading.Sync`): a failure on any rank makes every rank
  retry or skip together, so no rank waits in a collective for one that gave up.

None of this touches training: a reading runs in eval mode with the model's buffers and every
random state preserved, so a skipped reading leaves the weights, buffers, RNG streams and
optimiser exactly as a run without the monitor has them.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import torch

from cosmo_optim.monitor.config import MonitorConfig
from cosmo_optim.monitor.reading import LEAN_SHARE, Sync

__all__ = ["MAX_CONSECUTIVE_FAILURES", "Failure", "ReadingGuard", "is_out_of_memory"]

#: Skipped readings in a row after which the monitor stops reading for the rest of the run.
MAX_CONSECUTIVE_FAILURES: Final = 3

logger = logging.getLogger("cosmo_optim.monitor")

_OK, _OUT_OF_MEMORY, _ERROR = 0, 1, 2  # failure codes; the ranks agree on the largest
_T = TypeVar("_T")
_WHAT = {"reading": "the reading", "writing": "writing the reading",
         "forward": "the forward pass for the next reading's velocity ḟ"}
_TRACEBACK = " Said once per cause; its traceback is on the 'cosmo_optim.monitor' logger (INFO)."
_ELSEWHERE = "a failure on another rank"  # what a rank knows of another rank's failure


def _raised(cause: str) -> str:
    if cause == _ELSEWHERE:
        return "failed on another rank (that rank's warning names the cause)"
    return f"raised {cause}"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocator running out of memory: `torch.OutOfMemoryError`, or a
    RuntimeError saying so (other backends, the CPU allocator, another rank's report)."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text))


@dataclass(frozen=True)
class Failure:
    """What failed after the run started: at optimiser step `step`, in `stage` (``"reading"``,
    ``"forward"``: the outputs the step before a reading, for its velocity ḟ (T2), or
    ``"writing"``: a sink, logger or figure), its `cause` (the exception's type and first
    line), whether it was `retried` lean after running out of memory, and whether it was
    `skipped` (False: the lean retry succeeded)."""

    step: int
    stage: str
    cause: str
    retried: bool = False
    skipped: bool = True

    def line(self) -> str:
        """The failure in one line, as the ``cosmology/failures`` card lists it."""
        if self.stage == "writing":
            outcome = "lost in that sink or logger (the reading stays in the history)"
        elif not self.skipped:
            outcome = "out of memory, then recovered by a lean retry"
        else:
            outcome = "skipped" + (" after a lean retry failed too" if self.retried else "")
        return f"step {self.step}: {_WHAT[self.stage]} {_raised(self.cause)}; {outcome}"


class ReadingGuard:
    """The policy of the module docstring, for one tracker.

    Args:
        config: the monitor's options: ``distributed`` (the ranks agree) and those the fixes
            name (``probe_size``, the reading interval).
    """

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.started = False  # from here on: fail soft
        self.stopped = False  # MAX_CONSECUTIVE_FAILURES in a row: no more readings this run
        self.failed = 0  # readings skipped because they raised, over the run (checkpointed)
        self.failures: deque[Failure] = deque(maxlen=100)  # the latest ones
        self._streak: list[int] = []  # the steps of the latest skipped readings in a row
        self._warned: set[tuple[str, str, bool]] = set()
        self._unshown: deque[Failure] = deque(maxlen=100)  # not yet on a card
        self._card: tuple[int, str | None] = (-1, None)

    def read(self, step: int, take: Callable[[bool, Sync | None], _T],
             stage: str = "reading") -> _T | None:
        """``take(lean, sync)`` under the policy: its result, or None when it failed on any
        rank (then every rank skips it, and it is counted, warned about and recorded). Out of
        memory: retried once with ``lean=True``. Before the run has started the error is
        raised instead, on every rank."""
        sync = self._sync if self.config.distributed else None
        result, cause = self._attempt(take, False, sync)
        first = None  # running out of memory, before the lean retry
        if cause is not None and cause.code == _OUT_OF_MEMORY:
            first, result = cause, None
            _free_memory()
            result, cause = self._attempt(take, True, sync)
        if cause is None:
            return self._succeeded(step, stage, result, first)
        self._skipped(step, stage, cause, retried=first is not None)
        return None

    def _attempt(self, take: Callable[[bool, Sync | None], _T], lean: bool,
                 sync: Sync | None) -> tuple[_T | None, _Cause | None]:
        """One try of `take`, its outcome agreed by the ranks: (result, None), or (None, the
        cause with the agreed code) if it failed here or elsewhere; before the run has
        started, the error is raised instead."""
        try:
            result = take(lean, sync)
        except Exception as error:
            cause = _Cause.of(error)
            code = self._agree(cause.code)
            if not self.started:
                raise
            return None, dataclasses.replace(cause, code=code)
        code = self._agree(_OK)
        if code == _OK:
            return result, None
        if not self.started:
            raise _Elsewhere(code)
        return None, _Cause.elsewhere(code)

    def write(self, step: int, write: Callable[[], object]) -> None:
        """Run `write` (a reading's scalars, extras or figures to the sinks and loggers); after
        the run has started an error loses that write only (warned once per cause,
        recorded). Writes are rank 0's: no agreement, no effect on the readings."""
        if not self.started:
            write()
            return
        try:
            write()
        except Exception as error:
            cause = _Cause.of(error)
            self._record(Failure(step, "writing", cause.text), cause)

    def card(self, step: int) -> str | None:
        """The ``cosmology/failures`` TEXT card at `step`: the failures since the previous card
        (Markdown), or None; every writer of one step gets the same card."""
        if step != self._card[0]:
            text = None
            if self._unshown:
                lines = [f"- {f.line()}" for f in self._unshown]
                if self.stopped:
                    lines.append(f"- **No more readings in this run**: "
                                 f"{MAX_CONSECUTIVE_FAILURES} in a row failed.")
                text = "\n".join(["**The monitor failed here** (training is unaffected)", "",
                                  *lines])
            self._card = (step, text)
            self._unshown.clear()
        return self._card[1]

    # ----- outcomes -------------------------------------------------------------------------
    def _succeeded(self, step: int, stage: str, result: _T | None,
                   first: _Cause | None) -> _T | None:
        if stage == "reading":
            self._streak.clear()
        if first is not None:
            self._record(Failure(step, stage, first.text, retried=True, skipped=False), first)
        return result

    def _skipped(self, step: int, stage: str, cause: _Cause, retried: bool) -> None:
        if stage == "reading":
            self.failed += 1
            self._streak.append(step)
        self._record(Failure(step, stage, cause.text, retried=retried), cause)
        if len(self._streak) >= MAX_CONSECUTIVE_FAILURES and not self.stopped:
            self.stopped = True
            steps = ", ".join(map(str, self._streak[-MAX_CONSECUTIVE_FAILURES:]))
            warnings.warn(
                f"CosmologyTracker: {MAX_CONSECUTIVE_FAILURES} readings in a row failed (steps "
                f"{steps}; the last {_raised(cause.text)}), so the monitor takes no more readings "
                "in this run. Training continues unchanged and the e-folds still count; a run "
                f"resumed from a checkpoint reads again. {self._fix(stage, cause)}",
                RuntimeWarning, stacklevel=4,
            )

    def _record(self, failure: Failure, cause: _Cause) -> None:
        """Keep `failure` (for `failures` and the next card), log its traceback, and warn once
        per stage, cause and outcome."""
        self.failures.append(failure)
        self._unshown.append(failure)
        logger.info("CosmologyTracker: %s\n%s", failure.line(), cause.trace)
        key = (failure.stage, cause.kind, failure.skipped)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(self._message(failure, cause), RuntimeWarning, stacklevel=5)

    def _message(self, failure: Failure, cause: _Cause) -> str:
        what, fix = f"{_WHAT[failure.stage]} at step {failure.step}", self._fix(failure.stage,
                                                                                  cause)
        if failure.stage == "writing":
            effect = ("that write is lost (the reading stays in tracker.history) and training "
                      "continues unchanged")
        elif not failure.skipped:
            return (
                f"CosmologyTracker: {what} ran out of memory ({cause.text}) and succeeded when "
                f"retried lean (the probe batch in chunks of 1/{LEAN_SHARE}, and on CUDA the "
                f"kernel under 1/{LEAN_SHARE} of its memory budget); training is unaffected. "
                f"To spare the retry: {fix.removeprefix('Fix: ')}{_TRACEBACK}"
            )
        elif failure.stage == "reading":
            effect = (f"it is skipped ({self.failed} so far: cosmology/failed_readings; after "
                      f"{MAX_CONSECUTIVE_FAILURES} in a row the monitor stops reading) and "
                      "training continues unchanged")
        else:
            effect = ("the next reading logs no tags that need ḟ, and training continues "
                      "unchanged")
        retried = " (and again when retried lean)" if failure.retried else ""
        return (f"CosmologyTracker: {what} {_raised(cause.text)}{retried}; {effect}. "
                f"{fix}{_TRACEBACK}")

    def _fix(self, stage: str, cause: _Cause) -> str:
        config = self.config
        if cause.code == _OUT_OF_MEMORY:
            return (f"Fix: less memory per reading with probe_size={max(1, config.probe_size // 2)}"
                    f" (now {config.probe_size}), or fewer readings with "
                    f"a larger {config.interval_name}.")
        if cause.kind == "_Elsewhere":
            return "Fix: see the warning of the rank that failed."
        if stage == "writing":
            return ("Fix: the sink or logger in the traceback cannot take it (a full disk, a "
                    "closed writer, a callable sink that raises).")
        return ("Fix: the traceback shows where it came from: the model's forward or the output= "
                "selector on the probe batch are fixed there; anything else is a bug of "
                "cosmo-optim to report with that traceback.")

    # ----- agreement across ranks ---------------------------------------------------------
    def _sync(self, error: Exception | None) -> None:
        """`Sync`: raise on this rank if it did not fail and another one did."""
        code = self._agree(_OK if error is None else _code(error))
        if error is None and code != _OK:
            raise _Elsewhere(code)

    def _agree(self, code: int) -> int:
        """The largest failure code over the ranks (one all-reduce), or `code` alone."""
        if not self.config.distributed:
            return code
        import torch.distributed as dist

        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        flag = torch.tensor([code], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


class _Elsewhere(RuntimeError):
    """This rank's reading stopped because another rank's failed (the agreed failure `code`)."""

    def __init__(self, code: int) -> None:
        super().__init__(
            "CosmologyTracker: the reading failed on another rank (that rank's error names the "
            "cause); every rank gives it up together rather than wait for it in a collective."
        )
        self.code = code


def _code(error: Exception) -> int:
    if isinstance(error, _Elsewhere):
        return error.code
    return _OUT_OF_MEMORY if is_out_of_memory(error) else _ERROR


@dataclass(frozen=True)
class _Cause:
    """A failure as text only (holding the exception would hold its frames' tensors): its
    agreed `code`, the exception's type name (one warning per kind), one line, the traceback."""

    code: int
    kind: str
    text: str
    trace: str

    @classmethod
    def of(cls, error: Exception) -> _Cause:
        if isinstance(error, _Elsewhere):
            return cls.elsewhere(error.code)
        first = (str(error).strip().splitlines() or [""])[0]
        name = type(error).__name__
        text = f"{name}: {first[:300]}" if first else name
        return cls(_code(error), name, text, "".join(traceback.format_exception(error)))

    @classmethod
    def elsewhere(cls, code: int) -> _Cause:
        """The failure of another rank, as this rank knows it: its code only."""
        return cls(code, "_Elsewhere", _ELSEWHERE, "(on another rank)")


def _free_memory() -> None:
    """Free what a failed attempt held: its tensors (unreachable once its exception is gone;
    collected here if in reference cycles) and, on CUDA, the allocator's cached blocks."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
