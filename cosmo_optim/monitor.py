"""`CosmologyTracker`: watch a training run's universe evolve (docs/theory.md T3–T10).

A framework-free engine. Every `every_n_steps` optimiser steps it evaluates the model on a fixed
probe batch, computes the empirical NTK there (T4), its top modes (T7), the `FLRWDual` read-out
(H, Λ, Ω_φ, slow roll, mode masses; T3, T6, T8, T9), the mode amplitudes f̃ = Uᵀf in the current
eigenbasis and in the basis of the first probe, the kernel distance and eigenbasis rotation
since the first probe, and the residual between what the exact discrete NTK map (T10) predicted
at the previous probe and what training did. Results go to a bounded history and to a sink (a
TensorBoard ``SummaryWriter``, a log directory, or any callable). The Lightning and Hugging Face
callbacks in `cosmo_optim.callbacks` are thin adaptors over it; a plain PyTorch loop uses
`attach(optimizer)`.

Probes never change training: they run in eval mode, under ``torch.no_grad`` where possible,
with the global RNG state saved and restored, and never touch ``.grad`` or buffers.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from cosmo_optim import _monitor_tb
from cosmo_optim._common import check_int, one_thread, training
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual
from cosmo_optim.losses import PerSampleLoss, per_sample_loss
from cosmo_optim.ntk import empirical_ntk
from cosmo_optim.optim import cosmology_of
from cosmo_optim.predict import predict_trajectory
from cosmo_optim.spectrum import flat_kernel, kernel_distance, ntk_eigen

__all__ = ["SCALAR_TAGS", "CosmologyTracker", "scalar_tags"]

Sink = Callable[[dict[str, float], int], None]

#: Scalar tags logged at every probe; ``{k}`` runs over modes 1..top_k (``ratio`` from 2).
SCALAR_TAGS: Final = (
    "cosmology/hubble_rate",
    "cosmology/vacuum_energy",
    "cosmology/efolds",
    "cosmology/alpha_eff",
    "cosmology/field",
    "cosmology/potential",
    "cosmology/omega_phi",
    "cosmology/slow_roll_epsilon",
    "cosmology/slow_roll_eta",
    "cosmology/stability_margin",
    "cosmology/nonfinite",
    "ntk/lambda_1",
    "ntk/ratio_{k}",
    "ntk/kernel_distance",
    "ntk/basis_rotation",
    "ntk/mean_field_overlap",
    "modes/amplitude_{k}",
    "modes/initial_amplitude_{k}",
    "modes/mass_over_hubble_{k}",
    "modes/active",
    "duality/residual",
    "duality/relative_residual",
)
# Tags that need a momentum-SGD optimiser (a de Sitter dual) or a loss.
_NEEDS_DUAL = {
    "cosmology/hubble_rate", "cosmology/vacuum_energy", "cosmology/efolds",
    "cosmology/omega_phi", "cosmology/slow_roll_epsilon", "cosmology/slow_roll_eta",
    "cosmology/stability_margin", "cosmology/potential", "modes/mass_over_hubble_{k}",
    "modes/active", "duality/residual", "duality/relative_residual",
}
_NEEDS_LOSS = _NEEDS_DUAL - {"cosmology/hubble_rate", "cosmology/vacuum_energy", "cosmology/efolds"}


def scalar_tags(
    top_k: int, *, dual: bool = True, loss: bool = True, outputs: int = 1, prefix: str = ""
) -> list[str]:
    """The scalar tags a tracker logs for `top_k` modes (see `SCALAR_TAGS`).

    `dual` is False for optimisers without momentum-SGD form (Adam: no H, Λ, masses, residual),
    `loss` False when no loss was given, `outputs` the model's outputs per input (the scalar
    `cosmology/field` φ̄ exists for one output only).

    >>> scalar_tags(2, dual=False)[:4]
    ['cosmology/alpha_eff', 'cosmology/field', 'cosmology/nonfinite', 'ntk/lambda_1']
    """
    tags = []
    for tag in SCALAR_TAGS:
        if (not dual and tag in _NEEDS_DUAL) or (not loss and tag in _NEEDS_LOSS):
            continue
        if tag == "cosmology/field" and outputs != 1:
            continue
        if "{k}" in tag:
            first = 2 if tag.startswith("ntk/ratio") else 1
            tags += [prefix + tag.format(k=k) for k in range(first, top_k + 1)]
        else:
            tags.append(prefix + tag)
    return tags


def _inputs_targets(batch: Any, size: int) -> tuple[Tensor, Tensor | None]:
    """The first `size` samples of a batch: a tensor, or a sequence (inputs, targets, ...)."""
    if isinstance(batch, Tensor):
        inputs, targets = batch, None
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        inputs = batch[0]
        targets = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    else:
        raise ValueError(
            f"Cannot take a probe batch from a batch of type {type(batch).__name__}; "
            "it must be a Tensor or a sequence (inputs, targets, ...). "
            "Fix: pass probe_batch=(inputs, targets) explicitly."
        )
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"Invalid probe batch: inputs of shape {tuple(inputs.shape)} are empty.")
    if targets is not None and targets.shape[:1] != inputs.shape[:1]:
        targets = None  # not per-sample targets
    inputs = inputs[:size].detach().clone()
    return inputs, None if targets is None else targets[:size].detach().clone()


@contextlib.contextmanager
def _untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode and a saved/restored global RNG: a probe leaves training bit-for-bit alone."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), training(model, False):
        yield


class CosmologyTracker:
    """The training monitor's engine: probes a model and reads its FLRW dual (T3–T10).

    Each probe (optimiser step n, weights θ_n) computes on the probe batch: outputs f, the full
    output-space NTK (T4), its `top_k` eigenpairs (T7) and, for a momentum-SGD optimiser with a
    `loss`, the `FLRWDual` (T3–T10). The step before each probe it also records f_{n−1} (one
    forward pass) so that the field velocity ḟ = (f_n − f_{n−1})/sqrt(η) is known (T2); at
    step 0 it is exactly zero (T1). From each probe it predicts f at the next one with the exact
    discrete NTK map (T10); the residual to what training did is ``duality/residual``.

    Optimisers without heavy-ball momentum form (Adam, RMSprop, ...) have no de Sitter dual:
    only the NTK and mode-amplitude tags are logged (see `scalar_tags`).

    Args:
        model: the network (maps a batch of N inputs to N outputs).
        loss: the training loss (torch loss module, `PolynomialPotentialLoss`, or a per-sample
            callable; see `cosmo_optim.losses.per_sample_loss`). None skips the tags that need
            ℓ (Ω_φ, slow roll, masses, residual).
        optimizer: the optimiser; `attach` sets it too.
        probe_batch: a Tensor of inputs or a sequence (inputs, targets, ...); None to set it
            later with `set_probe` (the Lightning callback takes the first training batch).
        probe_size: at most this many samples of the probe batch are used (N).
        top_k: modes to follow (1 ≤ top_k ≤ N·C).
        every_n_steps: probe every n optimiser steps (and at step 0).
        log_figures_every_n_steps: draw figures at these steps (a multiple of
            `every_n_steps`) and once more at `close()`/end of training. None (the default)
            draws none: three figures cost ≈ 0.2 s, more than a dozen probes; `figures()`
            still draws them on demand.
        history_size: probes kept in `history` (oldest dropped first).
        sink: a ``SummaryWriter``-like object, a log directory (a ``SummaryWriter`` is created
            lazily), or a callable ``sink(metrics, step)``; None keeps results in `history`.
        prefix: prepended to every tag, e.g. ``"train/"``.
        group: the optimiser's param group whose (lr, momentum) define the universe.

    Raises:
        ValueError: on an invalid argument, naming the fix.

    Example:
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        >>> tracker = CosmologyTracker(net, nn.MSELoss(), probe_batch=(x, y), top_k=2,
        ...                            every_n_steps=5)
        >>> handle = tracker.attach(opt)
        >>> for _ in range(10):
        ...     opt.zero_grad(); nn.functional.mse_loss(net(x), y).backward(); opt.step()
        >>> [r["step"] for r in tracker.history]
        [0, 5, 10]
        >>> round(tracker.history[-1]["scalars"]["cosmology/hubble_rate"], 4)
        0.3333
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Any = None,
        *,
        optimizer: Optimizer | None = None,
        probe_batch: Any = None,
        probe_size: int = 16,
        top_k: int = 4,
        every_n_steps: int = 50,
        log_figures_every_n_steps: int | None = None,
        history_size: int = 1000,
        sink: Any = None,
        prefix: str = "",
        group: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__}; it must be an nn.Module.")
        self.model = model
        self.loss: PerSampleLoss | None = None if loss is None else per_sample_loss(loss)
        self.probe_size = check_int("probe_size", probe_size, 1, "Use e.g. probe_size=64.")
        self.top_k = check_int("top_k", top_k, 1, "Use e.g. top_k=4.")
        self.every_n_steps = check_int(
            "every_n_steps", every_n_steps, 1, "Probe every n ≥ 1 optimiser steps."
        )
        if log_figures_every_n_steps is not None:
            check_int("log_figures_every_n_steps", log_figures_every_n_steps, 1, "Or None.")
            if log_figures_every_n_steps % self.every_n_steps:
                raise ValueError(
                    f"Invalid log_figures_every_n_steps: {log_figures_every_n_steps!r}; it must "
                    f"be a multiple of every_n_steps={self.every_n_steps} (figures are drawn "
                    "at probes)."
                )
        self.log_figures_every_n_steps = log_figures_every_n_steps
        self.history: deque[dict[str, Any]] = deque(
            maxlen=check_int("history_size", history_size, 1, "Keep at least one probe.")
        )
        if not isinstance(prefix, str):
            raise ValueError(f"Invalid prefix: {prefix!r}; it must be a string such as 'train/'.")
        self.prefix = prefix
        self.group = group
        self.optimizer = optimizer
        self._writer: Any = None
        self._callback: Sink | None = None
        self._log_dir: str | None = None
        if isinstance(sink, (str, os.PathLike)):
            self._log_dir = os.fspath(sink)
        elif sink is not None and hasattr(sink, "add_scalar"):
            self._writer = sink
        elif callable(sink):
            self._callback = sink
        elif sink is not None:
            raise ValueError(
                f"Invalid sink: {sink!r}; give a SummaryWriter, a log directory, a callable "
                "sink(metrics, step), or None."
            )
        self._handle: Any = None
        self._efolds_key: tuple[Any, ...] | None = None
        self._efolds_rate = 0.0
        self._layout_written = False
        self._inputs: Tensor | None = None
        self._targets: Tensor | None = None
        if probe_batch is not None:
            self.set_probe(probe_batch)
        self._reset_state()

    # ----- state ---------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.last_step = -1  # the last optimiser step seen by `step`
        self.efolds = 0.0  # accumulated Σ (1 − β_n)/3 (T9)
        self.nonfinite = 0
        self._previous_outputs: tuple[int, Tensor] | None = None  # (step, f) before a probe
        self._reference: dict[str, Tensor] | None = None  # first probe: kernel, basis
        self._last: dict[str, Any] | None = None  # last probe: eigenpairs, outputs, prediction
        self._figures_step = -1
        self.dual: FLRWDual | None = None  # the latest probe's read-out

    def state_dict(self) -> dict[str, Any]:
        """Counters, history, probe batch and reference basis: everything `resume` needs."""
        return {
            "last_step": self.last_step,
            "efolds": self.efolds,
            "nonfinite": self.nonfinite,
            "history": list(self.history),
            "inputs": self._inputs,
            "targets": self._targets,
            "previous_outputs": self._previous_outputs,
            "reference": self._reference,
            "last": self._last,
            "figures_step": self._figures_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`: the run continues its histories without gaps or duplicates."""
        missing = {"last_step", "history", "reference", "last"} - set(state)
        if missing:
            raise ValueError(
                f"Invalid tracker state: missing {sorted(missing)}; pass the dict returned by "
                "CosmologyTracker.state_dict()."
            )
        self.last_step = int(state["last_step"])
        self.efolds = float(state.get("efolds", 0.0))
        self.nonfinite = int(state.get("nonfinite", 0))
        self.history.clear()
        self.history.extend(state["history"])
        if state.get("inputs") is not None:
            self._inputs, self._targets = state["inputs"], state.get("targets")
        self._previous_outputs = state.get("previous_outputs")
        self._reference = state["reference"]
        self._last = state["last"]
        self._figures_step = int(state.get("figures_step", -1))

    # ----- probe batch and optimiser ---------------------------------------------------------
    @property
    def has_probe(self) -> bool:
        """Whether a probe batch is set."""
        return self._inputs is not None

    @property
    def probe_batch(self) -> tuple[Tensor, Tensor | None] | None:
        """(inputs, targets) of the probe set, or None before one is set."""
        return None if self._inputs is None else (self._inputs, self._targets)

    def set_probe(self, batch: Any) -> None:
        """Fix the probe set: the first `probe_size` samples of `batch` (copied)."""
        self._inputs, self._targets = _inputs_targets(batch, self.probe_size)

    def cosmology(self) -> Cosmology | None:
        """The optimiser's de Sitter universe (T3), or None without momentum-SGD form."""
        if self.optimizer is None:
            return None
        try:  # also None for a group index the optimiser does not have
            return cosmology_of(self.optimizer, self.group)
        except ValueError:
            return None

    def _efolds_per_step(self) -> float:
        """(1 − β)/3 of the tracked group (T9), 0 without a de Sitter dual.

        Read after every optimiser step, so it is cached on what it depends on: the momentum
        (and the form of the optimiser), not the learning rate a scheduler changes every step.
        """
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        g = groups[self.group] if -len(groups) <= self.group < len(groups) else {}
        key = (id(self.optimizer), *(None if g.get(name) is None else float(g[name])
                                     for name in ("momentum", "nesterov", "dampening")))
        if self._efolds_key != key:
            cosmology = self.cosmology()
            self._efolds_rate = 0.0 if cosmology is None else cosmology.efolds_per_step
            self._efolds_key = key
        return self._efolds_rate

    def attach(self, optimizer: Optimizer) -> Any:
        """Track a plain PyTorch loop: probe now (step 0) and after every `optimizer.step()`.

        Uses `Optimizer.register_step_post_hook`; returns its handle (`handle.remove()` or
        `detach()` stops tracking). The step counter is the tracker's own `last_step`.
        """
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"Invalid optimizer: {optimizer!r}; it must be a torch Optimizer.")
        if not self.has_probe:
            raise ValueError(
                "attach() needs a probe batch. Fix: pass probe_batch=(inputs, targets) to "
                "CosmologyTracker or call set_probe(batch) first."
            )
        self.detach()
        self.optimizer = optimizer
        if self.last_step < 0:
            self.step(0)

        def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
            self.step(self.last_step + 1)

        self._handle = optimizer.register_step_post_hook(hook)
        return self._handle

    def detach(self) -> None:
        """Stop tracking the optimiser given to `attach`."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ----- scheduling -------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float] | None:
        """Report optimiser step `step` (weights after `step` updates); probe if it is due.

        Call once after every optimiser step (repeats of the same step are ignored, so several
        calls per accumulated batch are harmless). Probes at step 0 and every `every_n_steps`;
        the step before a probe it records the outputs for the velocity. Returns the probe's
        scalars, or None when nothing was probed.
        """
        if step <= self.last_step:
            return None
        # e-folds accrue with the β of each step (T9)
        self.efolds += (step - max(self.last_step, 0)) * self._efolds_per_step()
        self.last_step = step
        n = self.every_n_steps
        if not self.has_probe:
            return None
        if (step + 1) % n == 0:
            with one_thread():
                self._previous_outputs = (step, self._forward())
        if step % n:
            return None
        with one_thread():
            metrics = self.probe(step)
        if metrics is not None:
            self._emit(metrics, step, figures=self.figures_due(step))
        return metrics

    def figures_due(self, step: int) -> bool:
        """Whether figures are scheduled at `step`."""
        every = self.log_figures_every_n_steps
        return every is not None and step % every == 0

    def final_figures_step(self) -> int | None:
        """The last probe's step if the end-of-run figures are still to be drawn, else None.

        Figures are opt-in: None whenever `log_figures_every_n_steps` is None.
        """
        if self.log_figures_every_n_steps is None or not self.history:
            return None
        step = int(self.history[-1]["step"])
        return None if self._figures_step == step else step

    # ----- the probe ------------------------------------------------------------------------
    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _forward(self) -> Tensor:
        assert self._inputs is not None
        device = self._device()
        with _untouched(self.model, device), torch.no_grad():
            out = self.model(self._inputs.to(device))
        return out.detach().double().cpu()

    def probe(self, step: int) -> dict[str, float] | None:
        """Probe now, labelled `step`; returns the scalars (None if skipped as non-finite)."""
        if self._inputs is None:
            raise ValueError("probe() needs a probe batch. Fix: call set_probe(batch) first.")
        device = self._device()
        f = self._forward()
        with _untouched(self.model, device):
            kernel = empirical_ntk(
                self.model, self._inputs.to(device), output="full" if f[0].numel() > 1 else "trace"
            )
        kernel = kernel.detach().double().cpu()
        kernel = flat_kernel(kernel)
        if not (torch.isfinite(f).all() and torch.isfinite(kernel).all()):
            return self._skip(step)
        return self._read_out(step, f, kernel)

    def _skip(self, step: int) -> dict[str, float]:
        self.nonfinite += 1
        warnings.warn(
            f"CosmologyTracker: non-finite outputs or NTK at step {step}; probe skipped "
            f"({self.nonfinite} so far). Training continues; lower the learning rate if it "
            "diverged.",
            RuntimeWarning,
            stacklevel=3,
        )
        self._last = None  # no prediction across a bad probe
        return {self.prefix + "cosmology/nonfinite": float(self.nonfinite)}

    def _read_out(self, step: int, f: Tensor, kernel: Tensor) -> dict[str, float]:
        n = f.shape[0]
        k = min(self.top_k, kernel.shape[0])
        warm = None if self._last is None else self._last["eigenvectors"]
        lam, vec = ntk_eigen(kernel, k=k, warm_start=warm)
        if self._reference is None:
            self._reference = {"kernel": kernel, "eigenvectors": vec}
        ref = self._reference["eigenvectors"]
        vec = vec * torch.where((ref * vec).sum(0) < 0, -1.0, 1.0).to(vec)  # continuity
        flat = f.reshape(-1)
        s: dict[str, float] = {}
        lam_1 = float(lam[0])
        s["ntk/lambda_1"] = lam_1
        for j in range(1, k):
            s[f"ntk/ratio_{j + 1}"] = float(lam[j]) / lam_1 if lam_1 else math.nan
        s["ntk/kernel_distance"] = float(kernel_distance(self._reference["kernel"], kernel))
        s["ntk/basis_rotation"] = 1.0 - float((ref.T @ vec).pow(2).sum()) / k
        s["cosmology/alpha_eff"] = lam_1 / n
        if f[0].numel() == 1:
            s["cosmology/field"] = float(f.mean())
        amplitudes, initial = vec.T @ flat, ref.T @ flat  # f̃ = Uᵀ f (T7)
        for j in range(k):
            s[f"modes/amplitude_{j + 1}"] = float(amplitudes[j])
            s[f"modes/initial_amplitude_{j + 1}"] = float(initial[j])
        cosmology = self.cosmology()
        dual, velocity = None, None
        if cosmology is not None:
            s["cosmology/hubble_rate"] = cosmology.hubble_rate
            s["cosmology/vacuum_energy"] = cosmology.vacuum_energy
            s["cosmology/efolds"] = self.efolds
            if self.loss is not None:
                velocity = self._velocity(step, f, cosmology)
                dual = FLRWDual.from_eigen(
                    lam, vec, self.loss, f, cosmology=cosmology, targets=self._targets,
                    velocity=velocity, step=step,
                )
                s.update(self._dual_scalars(dual))
        s["ntk/mean_field_overlap"] = float(_uniform_overlaps(vec, n).max())
        s["cosmology/nonfinite"] = float(self.nonfinite)
        s.update(self._residual(step, f))
        record: dict[str, Any] = {
            "step": step,
            "eigenvalues": lam.clone(),
            "mean_field": f.reshape(n, -1).mean(0),
            "initial_amplitudes": initial.clone(),
            "prediction": None,
        }
        self._last = {"step": step, "eigenvectors": vec, "outputs": f, "prediction": None}
        if dual is not None and velocity is not None:
            self._predict(dual, record)
        s = {self.prefix + key: value for key, value in sorted(s.items())}
        record["scalars"] = s
        self.history.append(record)
        self.dual = dual
        return s

    def _velocity(self, step: int, f: Tensor, cosmology: Cosmology) -> Tensor | None:
        """ḟ = (f_n − f_{n−1})/sqrt(η) (T2); exactly zero at step 0 (T1); None if unknown."""
        if step == 0:
            return torch.zeros_like(f)
        prev = self._previous_outputs
        if prev is None or prev[0] != step - 1:
            return None
        return (f - prev[1]) / cosmology.time_step

    def _predict(self, dual: FLRWDual, record: dict[str, Any]) -> None:
        """Iterate the exact discrete NTK map (T10) from this probe to the next one."""
        steps = self.every_n_steps
        try:
            pred = predict_trajectory(dual, steps, method="discrete")
        except ValueError:  # the map diverges (stability margin ≥ 1, T10): nothing to compare
            return
        assert pred.outputs is not None and self._reference is not None
        outputs = torch.from_numpy(pred.outputs).reshape(steps + 1, -1)
        assert self._last is not None
        self._last["prediction"] = (dual.step + steps, outputs[-1])
        record["prediction"] = {
            "steps": [dual.step + i for i in range(steps + 1)],
            "amplitudes": outputs.to(torch.float64) @ self._reference["eigenvectors"],
        }

    def _residual(self, step: int, f: Tensor) -> dict[str, float]:
        """RMS gap between the outputs the last probe predicted for `step` and the actual ones,
        and that gap relative to how far the outputs moved (0 = perfect, 1 = no better than
        predicting no motion)."""
        last = self._last
        if last is None or last.get("prediction") is None or last["prediction"][0] != step:
            return {}
        predicted = last["prediction"][1].to(f)
        gap = (f.reshape(-1) - predicted).norm()
        moved = (f - last["outputs"]).norm()
        return {
            "duality/residual": float(gap) / math.sqrt(f.numel()),
            "duality/relative_residual": float(gap / moved) if moved > 0 else math.nan,
        }

    def _dual_scalars(self, dual: FLRWDual) -> dict[str, float]:
        s: dict[str, float] = {}
        s["cosmology/potential"] = float(dual.potential(dual.mean_field))
        s["cosmology/omega_phi"] = dual.vacuum_domination
        s["cosmology/slow_roll_epsilon"], s["cosmology/slow_roll_eta"] = dual.slow_roll
        s["cosmology/stability_margin"] = dual.stability_margin
        for j, value in enumerate(dual.mass_over_hubble.tolist()):
            s[f"modes/mass_over_hubble_{j + 1}"] = value
        s["modes/active"] = float(dual.active_modes())
        return s

    # ----- output ---------------------------------------------------------------------------
    def _emit(self, metrics: dict[str, float], step: int, *, figures: bool) -> None:
        if self._callback is not None:
            self._callback(metrics, step)
        writer = self.writer
        if writer is not None:
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, step)
            _monitor_tb.write_extras(writer, self, step, figures=figures)

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` sink (created on first use from a log directory), or None."""
        if self._writer is None and self._log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self._log_dir)
        return self._writer

    def figures(self) -> dict[str, Any]:
        """Matplotlib figures of the run so far, by tag (see `cosmo_optim._monitor_tb`)."""
        return _monitor_tb.figures(self)

    def close(self) -> None:
        """Detach, draw the final figures (if figures are enabled) to the writer sink, and
        close a writer it created."""
        self.detach()
        step = self.final_figures_step()
        if step is not None and self.writer is not None:
            _monitor_tb.write_figures(self.writer, self, step)
        if self._log_dir is not None and self._writer is not None:
            self._writer.close()
            self._writer = None


def _uniform_overlaps(vec: Tensor, n: int) -> Tensor:
    """|u_k·1|/sqrt(N) per mode, per-output sums for C outputs (T7); as `FLRWDual`'s."""
    return vec.reshape(n, -1, vec.shape[1]).sum(0).norm(dim=0) / math.sqrt(n)
