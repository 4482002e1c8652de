"""Fail fast, then fail soft (`cosmo_optim.monitor.guard`): a reading that raises after the run
started never reaches the training loop, whose weights stay those of a run without the monitor."""

from __future__ import annotations

import socket
import warnings
from datetime import timedelta
from typing import ClassVar

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_ranks import exit_rank
from torch import nn

import cosmo_optim.monitor.reading as reading
from cosmo_optim.monitor import CosmologyTracker
from cosmo_optim.monitor.guard import MAX_CONSECUTIVE_FAILURES, is_out_of_memory

STEPS, EVERY = 22, 4  # readings at 0, 4, ..., 20; the velocity's forward at 3, 7, ..., 19


class Net(nn.Module):
    """A dropout MLP whose eval forward (the monitor's) runs out of memory at the steps in
    `fail_at` (`step` is set by the loop)."""

    def __init__(self, fail_at=()) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.fail_at, self.step = set(fail_at), 0

    def forward(self, x):
        if not self.training and self.step in self.fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


class Writer:
    """A SummaryWriter stand-in keeping scalars and TEXT cards."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.texts: list[tuple[str, str, int]] = []

    def add_scalar(self, tag, value, step=None):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step=None):
        self.texts.append((tag, text, step))


def train(tracked: bool, make=Net, sink=None, steps: int = STEPS):
    """`steps` full-batch steps of the model `make()` builds, with a tracker attached if
    `tracked`: (model, tracker, the random numbers drawn after training, warnings)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2,
                               every_n_steps=EVERY, sink=sink) if tracked else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if tracker is not None:
            tracker.attach(opt)
        for i in range(steps):
            model.step = i + 1  # the step the hook after this optimiser step reads
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    return model, tracker, torch.rand(3), [w for w in caught if w.category is RuntimeWarning]


def same_training(a: Net, b: Net, rng_a: torch.Tensor, rng_b: torch.Tensor) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return all(torch.equal(state_a[k], state_b[k]) for k in state_a) and torch.equal(rng_a, rng_b)


@pytest.fixture(scope="module")
def plain():
    model, _, rng, _ = train(False)
    return model, rng


def test_out_of_memory_in_the_eval_forward_is_retried_lean_then_skipped(plain):
    writer = Writer()
    model, tracker, rng, caught = train(True, lambda: Net(fail_at={8}), sink=writer)
    assert same_training(model, plain[0], rng, plain[1])
    assert [r.step for r in tracker.history] == [0, 4, 12, 16, 20]
    (warning,) = caught
    text = str(warning.message)
    assert "the reading at step 8 raised OutOfMemoryError: CUDA out of memory" in text
    assert "(and again when retried lean)" in text and "training continues unchanged" in text
    assert "Fix: less memory per reading with probe_size=8 (now 16)" in text
    failed = [(v, s) for t, v, s in writer.scalars if t == "cosmology/failed_readings"]
    assert failed == [(1.0, 8), (1.0, 12), (1.0, 16), (1.0, 20)]  # from the failure on
    assert [(tag, step) for tag, _, step in writer.texts if tag == "cosmology/failures"] == [
        ("cosmology/failures", 8)]
    card = next(text for tag, text, _ in writer.texts if tag == "cosmology/failures")
    assert "step 8: the reading raised OutOfMemoryError" in card and "lean retry failed" in card
    assert [(f.step, f.stage, f.retried, f.skipped) for f in tracker.failures] == [
        (8, "reading", True, True)]
    assert tracker.history[-1].scalars["cosmology/failed_readings"] == 1.0


class OnceOutOfMemory(Net):
    """At step 8 its first forward without autograd (a reading's first pass: the outputs f)
    runs out of memory, later ones pass; `sizes` records the sizes of those forwards (a class
    attribute: a reading restores the model's own attributes as they were)."""

    sizes: ClassVar[list[int]] = []

    def forward(self, x):
        if self.step == 8 and not torch.is_grad_enabled():
            self.sizes.append(x.shape[0])
            if len(self.sizes) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_out_of_memory_that_a_lean_retry_survives_keeps_the_reading(plain):
    """The retry takes the 16 probe samples LEAN_SHARE = 4 at a time, and its reading is the
    one a run without the failure takes."""
    clean = train(True)[1]
    OnceOutOfMemory.sizes.clear()
    model, tracker, rng, caught = train(True, OnceOutOfMemory)
    assert model.sizes[:5] == [16, 4, 4, 4, 4]
    assert same_training(model, plain[0], rng, plain[1])
    assert [r.step for r in tracker.history] == [0, 4, 8, 12, 16, 20]
    (warning,) = caught
    assert "ran out of memory (OutOfMemoryError" in str(warning.message)
    assert "succeeded when retried lean" in str(warning.message)
    got, want = tracker.history[2].scalars, clean.history[2].scalars
    assert got.keys() == want.keys()
    for tag in want:
        assert got[tag] == pytest.approx(want[tag], rel=1e-6, abs=1e-9), tag
    assert [(f.step, f.skipped) for f in tracker.failures] == [(8, False)]
    assert tracker.guard.failed == 0


def test_a_raw_error_in_the_kernel_is_skipped_and_three_in_a_row_stop_the_readings(
        plain, monkeypatch):
    kernel, calls = reading.empirical_ntk, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:  # the readings at 8, 12, 16: a bug of the kernel
            raise IndexError("list index out of range")
        return kernel(*args, **kwargs)

    efolds = train(True)[1].efolds
    monkeypatch.setattr(reading, "empirical_ntk", failing)
    model, tracker, rng, caught = train(True)
    assert same_training(model, plain[0], rng, plain[1])
    assert [r.step for r in tracker.history] == [0, 4]
    assert len(calls) == 2 + MAX_CONSECUTIVE_FAILURES  # no lean retry: not out of memory
    first, stop = (str(w.message) for w in caught)
    assert first.startswith("CosmologyTracker: the reading at step 8 raised IndexError: list "
                            "index out of range; it is skipped (1 so far")
    assert "Fix: the traceback shows where it came from" in first
    assert "3 readings in a row failed (steps 8, 12, 16; the last raised IndexError" in stop
    assert "no more readings in this run" in stop
    assert tracker.guard.stopped and tracker.guard.failed == 3
    assert tracker.efolds == pytest.approx(efolds)  # every step still counts (T9)


class FullDisk(Writer):
    """A writer whose disk is full at step 8."""

    def add_scalar(self, tag, value, step=None):
        if step == 8:
            raise OSError(28, "No space left on device")
        super().add_scalar(tag, value, step)


def test_a_failing_sink_loses_that_write_only(plain):
    writer = FullDisk()
    model, tracker, rng, caught = train(True, sink=writer)
    assert same_training(model, plain[0], rng, plain[1])
    assert sorted({step for _, _, step in writer.scalars}) == [0, 4, 12, 16, 20]
    assert [r.step for r in tracker.history] == [0, 4, 8, 12, 16, 20]  # the reading is kept
    (warning,) = caught
    assert "writing the reading at step 8 raised OSError: [Errno 28] No space left" in str(
        warning.message) and "stays in tracker.history" in str(warning.message)
    assert tracker.guard.failed == 0 and not tracker.guard.stopped  # writes never stop it
    cards = [(text, step) for tag, text, step in writer.texts if tag == "cosmology/failures"]
    assert len(cards) == 1 and cards[0][1] == 12 and "step 8: writing the reading" in cards[0][0]


def test_a_failing_forward_before_a_reading_drops_only_its_velocity(plain):
    """The outputs at step 7 feed the reading at 8 (ḟ, T2): without them that reading has no
    dual tags, the others are all there, and no reading counts as failed."""
    model, tracker, rng, caught = train(True, lambda: Net(fail_at={7}))
    assert same_training(model, plain[0], rng, plain[1])
    assert [r.step for r in tracker.history] == [0, 4, 8, 12, 16, 20]
    (warning,) = caught
    assert "the forward pass for the next reading's velocity ḟ at step 7" in str(warning.message)
    assert "cosmology/omega_phi" not in tracker.history[2].scalars
    assert "cosmology/omega_phi" in tracker.history[3].scalars
    assert tracker.guard.failed == 0


def test_errors_before_the_run_started_are_raised_and_interrupts_always():
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
        train(True, lambda: Net(fail_at={0}))  # the first reading, at attach

    def sink(metrics, step):
        if step == 0:
            raise ValueError("this sink takes no step 0")  # the first reading's write
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(ValueError, match="takes no step 0"):
        train(True, sink=sink)
    with pytest.raises(KeyboardInterrupt):
        train(True, sink=lambda metrics, step: sink(metrics, step + (step == 0)))


def test_out_of_memory_is_recognised_by_type_and_by_message():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] . "
                                         "DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator's
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# ----- two gloo ranks, rank 1 failing ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(rank: int, port: int, out: str) -> None:
    """Rank 1 fails at three readings, each at another point: its eval forward runs out of
    memory (step 4, before the kernel's collectives; and its lean retry too), its shard of the
    kernel raises (step 8, inside them), the read-out raises (step 16, after them). Each rank
    also trains without the monitor, for the weights to compare with."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))  # a hang fails
    try:
        import cosmo_optim.ntk.distributed as features

        shard, read_out = features.FeatureMap.all, reading.read_out

        def failing_shard(self, lo, hi):
            if rank == 1 and model.step == 8:
                raise RuntimeError("the engine failed on this rank's shard")
            return shard(self, lo, hi)

        def failing_read_out(*args, **kwargs):
            if rank == 1 and model.step == 16:
                raise ZeroDivisionError("float division by zero")
            return read_out(*args, **kwargs)

        features.FeatureMap.all, reading.read_out = failing_shard, failing_read_out
        plain, _, plain_rng, _ = train(False)
        torch.manual_seed(0)
        model = Net(fail_at={4} if rank == 1 else ())
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2,
                                   every_n_steps=EVERY, distributed=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker.attach(opt)
            for i in range(STEPS):
                model.step = i + 1
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
        rng = torch.rand(3)
        torch.save({"same": same_training(model, plain, rng, plain_rng),
                    "steps": [r.step for r in tracker.history], "failed": tracker.guard.failed,
                    "failures": [(f.step, f.retried) for f in tracker.failures],
                    "scalars": [r.scalars for r in tracker.history],
                    "warnings": [str(w.message) for w in caught
                                 if w.category is RuntimeWarning]}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_rank()


def test_two_ranks_skip_together_when_rank_1_fails_and_finish_every_step(tmp_path):
    mp.start_processes(_ranks, args=(_free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for r in ranks:
        assert r["same"]  # weights and random stream: those of the run without the monitor
        assert r["steps"] == [0, 12, 20]  # 4, 8 and 16 skipped on both ranks
        assert r["failures"] == [(4, True), (8, False), (16, False)]
        assert r["failed"] == 3 and r["scalars"][-1]["cosmology/failed_readings"] == 3.0
    assert ranks[0]["scalars"] == ranks[1]["scalars"]
    assert any("step 4 raised OutOfMemoryError" in w for w in ranks[1]["warnings"])
    assert any("step 8 raised RuntimeError: the engine failed" in w for w in ranks[1]["warnings"])
    assert any("step 16 raised ZeroDivisionError" in w for w in ranks[1]["warnings"])
    assert any("step 4 failed on another rank (that rank's warning names the cause) (and "
               "again when retried lean)" in w for w in ranks[0]["warnings"])
