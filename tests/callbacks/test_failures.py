"""The adaptors fail soft (`cosmo_optim.monitor.guard`): a failure injected after the first
reading — out of memory in the model's eval forward, a raw error in the kernel, a logger or
integration that raises — leaves a Lightning or Hugging Face run finishing every step with the
weights of a run without the monitor, one warning, and the failure in the logs; checkpoints
load with and without the monitor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import cosmo_optim.monitor.reading as reading

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("tensorboard")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from test_lightning import Regressor, data, events, trainer  # noqa: E402

from cosmo_optim.callbacks import CosmologyMonitor  # noqa: E402

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def ours(caught) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("CosmologyTracker")
            and w.category is RuntimeWarning]


def fail_kernel_at(monkeypatch, call: int) -> None:
    """The `call`-th kernel of the run (one per reading) raises, as a bug of the engine would."""
    kernel, calls = reading.empirical_ntk, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm")
        return kernel(*args, **kwargs)

    monkeypatch.setattr(reading, "empirical_ntk", failing)


# ----- Lightning ---------------------------------------------------------------------------
class Tight(Regressor):
    """Its eval forward (the monitor's) runs out of memory at optimiser step 6."""

    def forward(self, x):
        if not self.training and self.trainer.global_step == 6:
            raise torch.OutOfMemoryError(OOM)
        return super().forward(x)


class FullDiskLogger(TensorBoardLogger):
    """A logger whose disk is full when the monitor's step-6 reading arrives (on Lightning's
    own step, 5)."""

    def log_metrics(self, metrics, step=None):
        if step == 5 and "ntk/lambda_1" in metrics:
            raise OSError(28, "No space left on device")
        super().log_metrics(metrics, step)


def fit(tmp_path, model_cls, callbacks=(), logger=None, ckpt_path=None, **kwargs):
    """A 10-step run of `model_cls` (dropout 0.5): (trainer, model, the random numbers drawn
    after it, its warnings)."""
    L.seed_everything(7)
    model = model_cls(dropout=0.5)
    run = trainer(tmp_path, list(callbacks), **{"max_steps": 10, **kwargs})
    if logger is not None:
        run.loggers = [logger]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.fit(model, data(), ckpt_path=ckpt_path)
    return run, model, torch.rand(1), caught


@pytest.fixture(scope="module")
def lightning_plain(tmp_path_factory):
    _, model, rng, _ = fit(tmp_path_factory.mktemp("plain"), Regressor)
    return model.state_dict(), rng


def failures_card(acc, step: int) -> str:
    event = next(e for e in acc.Tensors("cosmology/failures/text_summary") if e.step == step)
    return event.tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("failure", ["out of memory", "kernel", "logger"])
def test_lightning_finishes_every_step_with_the_weights_of_a_run_without_the_monitor(
        tmp_path, monkeypatch, lightning_plain, failure):
    model_cls = Tight if failure == "out of memory" else Regressor
    if failure == "kernel":
        fail_kernel_at(monkeypatch, 4)  # the readings at 0, 2, 4, 6
    logger = FullDiskLogger(tmp_path, name="", version=0) if failure == "logger" else None
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=2)
    run, model, rng, caught = fit(tmp_path, model_cls, [monitor], logger=logger)
    assert run.global_step == 10
    plain, plain_rng = lightning_plain
    assert all(torch.equal(model.state_dict()[k], plain[k]) for k in plain)
    assert torch.equal(rng, plain_rng)
    (warning,) = ours(caught)
    acc = events(tmp_path / "version_0")
    history = [r.step for r in monitor.tracker.history]
    if failure == "logger":
        assert "writing the reading at step 6 raised OSError: [Errno 28]" in warning
        assert history == [0, 2, 4, 6, 8, 10]  # the reading is kept, its write lost
        assert 5 not in [e.step for e in acc.Scalars("ntk/lambda_1")]  # Lightning's step
        assert "step 6: writing the reading raised OSError" in failures_card(acc, 7)
        return
    cause = "OutOfMemoryError: " + OOM if failure == "out of memory" else "RuntimeError: CUBLAS"
    assert f"the reading at step 6 raised {cause}" in warning
    assert history == [0, 2, 4, 8, 10]
    failed = [(e.step, e.value) for e in acc.Scalars("cosmology/failed_readings")]
    assert failed == [(5, 1.0), (7, 1.0), (9, 1.0)]  # on Lightning's own steps (n − 1)
    assert run.callback_metrics["cosmology/failed_readings"] == 1.0
    assert f"step 6: the reading raised {cause}" in failures_card(acc, 5)


def test_a_checkpoint_written_with_the_monitor_resumes_without_it_and_with_a_later_version(
        tmp_path):
    saver = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=2)
    fit(tmp_path / "first", Regressor, [monitor, saver], max_steps=5, enable_checkpointing=True)
    ckpt = tmp_path / "ckpt" / "epoch=0-step=5.ckpt"
    saved = torch.load(ckpt, weights_only=True)  # plain dicts and tensors
    (key,) = [k for k in saved["callbacks"] if k.startswith("CosmologyMonitor")]
    assert saved["callbacks"][key]["version"] == 2
    run, _, _, _ = fit(tmp_path / "without", Regressor, [], max_steps=10, ckpt_path=ckpt)
    assert run.global_step == 10  # the monitor's state is ignored without the monitor
    saved["callbacks"][key]["version"] = 3  # as a later cosmo-optim would write it
    later = tmp_path / "later.ckpt"
    torch.save(saved, later)
    resumed = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=2)
    run, _, _, caught = fit(tmp_path / "later", Regressor, [resumed], max_steps=10,
                            ckpt_path=later)
    (dropped,) = [str(w.message) for w in caught if "cannot be read" in str(w.message)]
    assert "state version 3; this cosmo-optim reads versions 1 to 2" in dropped
    assert run.global_step == 10
    assert [r.step for r in resumed.tracker.history] == [10]  # a new series, at its step


DDP_SCRIPT = """
import json, sys, warnings, torch
from pathlib import Path
from torch import nn
import lightning.pytorch as L
from lightning.pytorch.loggers import TensorBoardLogger
sys.path.insert(0, {tests!r})
from test_lightning import Regressor, data
import cosmo_optim.ntk.distributed as features
from cosmo_optim.callbacks import CosmologyMonitor


class RankOneTight(Regressor):  # rank 1's eval forward runs out of memory at step 4
    def forward(self, x):
        if not self.training and self.trainer.global_step == 4 and self.global_rank == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


shard = features.FeatureMap.all  # rank 1's shard of the kernel raises at step 8
def failing(self, lo, hi):
    if model.trainer.global_step == 8 and model.global_rank == 1:
        raise RuntimeError("the engine failed on this rank's shard")
    return shard(self, lo, hi)
features.FeatureMap.all = failing

runs = {{}}
for watched in (False, True):  # the same DDP job without the monitor, then with it
    L.seed_everything(0)
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=2) if watched else None
    trainer = L.Trainer(
        max_steps=10, accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        callbacks=[monitor] if watched else [], use_distributed_sampler=False,
        logger=TensorBoardLogger({log!r}, name="", version=int(watched)),
    )
    model = RankOneTight(dropout=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data())
    runs[watched] = dict(
        step=trainer.global_step, weights={{k: v.tolist() for k, v in model.state_dict().items()}},
        history=[r.step for r in monitor.tracker.history] if watched else [],
        failed=monitor.tracker.guard.failed if watched else 0,
        warnings=[str(w.message) for w in caught if str(w.message).startswith("CosmologyTracker")])
Path({results!r}, f"rank{{trainer.global_rank}}.json").write_text(json.dumps(
    dict(plain=runs[False], watched=runs[True])))
"""


@pytest.mark.slow
def test_lightning_ddp_with_rank_1_failing_skips_on_both_ranks_and_trains_as_without(
        tmp_path, rank_results):
    """Rank 1 runs out of memory in its eval forward at step 4 (before the kernel's
    collectives) and its shard of the kernel raises at step 8 (inside them): both ranks skip
    those readings, finish all 10 steps, and hold the weights of the same DDP job without the
    monitor."""
    results = rank_results()
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), log=str(tmp_path / "logs"),
                                        results=str(results.directory)))
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)  # a hang fails here
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = results.collect(2, done.stderr)
    for rank in ranks:
        plain, watched = rank["plain"], rank["watched"]
        assert watched["step"] == plain["step"] == 10
        assert watched["weights"] == plain["weights"]
        assert watched["history"] == [0, 2, 6, 10] and watched["failed"] == 2
    warned = [r["watched"]["warnings"] for r in ranks]
    assert any("step 4 raised OutOfMemoryError" in w for w in warned[1])
    assert any("step 8 raised RuntimeError: the engine failed" in w for w in warned[1])
    assert any("step 4 failed on another rank" in w for w in warned[0])
    acc = events(tmp_path / "logs" / "version_1")
    assert [(e.step, e.value) for e in acc.Scalars("cosmology/failed_readings")] == [
        (3, 1.0), (5, 1.0), (7, 2.0), (9, 2.0)]  # on Lightning's own steps (n − 1)


# ----- Hugging Face ------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from test_huggingface import Classifier, Examples  # noqa: E402

from cosmo_optim.callbacks import CosmologyCallback  # noqa: E402


class TightClassifier(Classifier):
    """Its eval forward (the monitor's) runs out of memory at optimiser step 6 (`step` is set
    before each step by `Steps`)."""

    step = 0

    def forward(self, x, labels=None, mask=None):
        if not self.training and TightClassifier.step == 6:
            raise torch.OutOfMemoryError(OOM)
        return super().forward(x, labels, mask)


class Steps(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        TightClassifier.step = state.global_step + 1


class FailingIntegration(transformers.integrations.TensorBoardCallback):
    """An integration whose service is down when the monitor's step-6 row arrives."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 6 and "ntk/lambda_1" in (logs or {}):
            raise ConnectionError("the tracking server refused the connection")
        return super().on_log(args, state, control, logs=logs, **kwargs)


def hf_run(tmp_path, monitored: bool, failure: str | None = None):
    torch.manual_seed(0)
    model = TightClassifier() if failure == "out of memory" else Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, logging_steps=3, per_device_train_batch_size=8,
        report_to=[], save_strategy="steps", save_steps=6, use_cpu=True, disable_tqdm=True,
        lr_scheduler_type="constant", seed=0)
    extra = [FailingIntegration()] if failure == "integration" else []
    run = transformers.Trainer(model=model, args=args, train_dataset=Examples(),
                               optimizers=(opt, None), callbacks=[Steps(), *extra])
    callback = None
    if monitored:
        callback = CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2, trainer=run)
        run.add_callback(callback)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.train()
    return run, callback, ours(caught)


def own_rows(run) -> list[dict]:
    keep = ("loss", "learning_rate", "grad_norm", "epoch", "step")
    return [{k: v for k, v in e.items() if k in keep} for e in run.state.log_history
            if not any("/" in k for k in e) and "train_runtime" not in e]


@pytest.fixture(scope="module")
def hf_plain(tmp_path_factory):
    run, _, _ = hf_run(tmp_path_factory.mktemp("plain"), False)
    return run, own_rows(run)


@pytest.mark.parametrize("failure", ["out of memory", "kernel", "integration"])
def test_hugging_face_finishes_every_step_with_the_weights_of_a_run_without_the_monitor(
        tmp_path, monkeypatch, hf_plain, failure):
    if failure == "kernel":
        fail_kernel_at(monkeypatch, 3)  # the readings at 0, 3, 6
    run, callback, caught = hf_run(tmp_path, True, failure)
    plain, plain_rows = hf_plain
    assert run.state.global_step == 12
    for a, b in zip(run.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert own_rows(run) == plain_rows  # its own logs, as without the callback
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-12", "checkpoint-6"]
    (warning,) = caught
    rows = {e["step"]: e for e in run.state.log_history if "cosmology/nonfinite" in e
            or "cosmology/failed_readings" in e}
    if failure == "integration":
        assert "writing the reading at step 6 raised ConnectionError: the tracking" in warning
        assert [r.step for r in callback.tracker.history] == [0, 3, 6, 9, 12]
        return
    cause = "OutOfMemoryError" if failure == "out of memory" else "RuntimeError: CUBLAS"
    assert f"the reading at step 6 raised {cause}" in warning
    assert [r.step for r in callback.tracker.history] == [0, 3, 9, 12]
    assert {k: v for k, v in rows[6].items() if "/" in k} == {"cosmology/failed_readings": 1.0}
    assert rows[12]["cosmology/failed_readings"] == 1.0


def resumed_hf(tmp_path, checkpoint, monitored=False):
    torch.manual_seed(0)
    model = Classifier()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, logging_steps=3, per_device_train_batch_size=8,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        lr_scheduler_type="constant", seed=0)
    run = transformers.Trainer(model=model, args=args, train_dataset=Examples(),
                               optimizers=(torch.optim.SGD(model.parameters(), lr=0.05,
                                                           momentum=0.9), None),
                               )
    callback = None
    if monitored:
        callback = CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2, trainer=run)
        run.add_callback(callback)
    run.train(resume_from_checkpoint=str(checkpoint))
    return run, callback


def test_a_hugging_face_checkpoint_resumes_without_the_callback_and_with_a_later_version(
        tmp_path):
    hf_run(tmp_path / "first", True)
    checkpoint = tmp_path / "first" / "checkpoint-6"
    assert resumed_hf(tmp_path / "without", checkpoint)[0].state.global_step == 12
    state_file = checkpoint / "trainer_state.json"
    saved = json.loads(state_file.read_text())
    stored = saved["stateful_callbacks"]["CosmologyCallbackState"]["attributes"]["saved_state"]
    assert stored["version"] == 2
    stored["version"] = 3  # as a later cosmo-optim would write it
    state_file.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="state version 3; this cosmo-optim reads versions 1 to 2"):
        run, callback = resumed_hf(tmp_path / "later", checkpoint, monitored=True)
    assert run.state.global_step == 12
    assert [r.step for r in callback.tracker.history] == [9, 12]  # a new series from step 9
