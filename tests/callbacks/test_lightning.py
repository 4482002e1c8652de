"""`CosmologyMonitor` in real Lightning runs: tags, steps and values read back from event files,
resume, bitwise-identical training, DDP, bad configuration, and the TensorBoard server."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("tensorboard")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from cosmo_optim import CosmoSGD, cosmology_of  # noqa: E402
from cosmo_optim.callbacks import CosmologyMonitor  # noqa: E402
from cosmo_optim.monitor import scalar_tags  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STEP_TAGS = ("cosmology/hubble_rate", "ntk/lambda_1", "modes/amplitude_1")


class Regressor(L.LightningModule):
    """A tiny MLP with dropout, trained with MSE by CosmoSGD (or Adam)."""

    def __init__(self, optimizer: str = "cosmo", dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))
        self.optimizer = optimizer

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2)
        return CosmoSGD(self.parameters(), vacuum_energy=3.0, time_step=0.1)


def data(n: int = 40, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=batch_size)


def trainer(tmp_path, callbacks=(), *, logger=True, **kwargs) -> L.Trainer:
    options = dict(
        max_steps=10,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=TensorBoardLogger(tmp_path, name="", version=0) if logger else False,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps_of(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def test_tags_steps_and_values_reach_tensorboard_and_callback_metrics(tmp_path):
    L.seed_everything(0)
    model = Regressor()
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=3,
                               log_figures_every_n_steps=10)
    fit = trainer(tmp_path, [monitor])
    fit.fit(model, data())
    acc = events(tmp_path / "version_0")
    tags = set(acc.Tags()["scalars"])
    assert set(scalar_tags(3)) <= tags
    for tag in STEP_TAGS:  # on Lightning's own step: the reading after n steps at n − 1
        assert steps_of(acc, tag) == [0, 4, 9]
    universe = cosmology_of(fit.optimizers[0])
    assert [e.value for e in acc.Scalars("cosmology/hubble_rate")] == pytest.approx([universe.hubble_rate] * 3)
    assert [e.value for e in acc.Scalars("cosmology/vacuum_energy")] == pytest.approx([3.0] * 3)
    assert acc.Scalars("cosmology/efolds")[-1].value == pytest.approx(10 * universe.efolds_per_step)
    assert steps_of(acc, "duality/residual") == [4, 9]  # a prediction needs a previous probe
    assert {"ntk/spectrum", "modes/mass_over_hubble"} <= set(acc.Tags()["histograms"])
    assert {"figures/potential", "figures/spectrum", "figures/modes"} <= set(acc.Tags()["images"])
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    recorded = monitor.tracker.history[-1]["scalars"]
    assert float(fit.callback_metrics["ntk/lambda_1"]) == pytest.approx(recorded["ntk/lambda_1"])
    assert acc.Scalars("ntk/lambda_1")[-1].value == pytest.approx(recorded["ntk/lambda_1"])


def test_a_csv_logger_s_monitor_rows_share_lightning_s_steps_with_train_loss(tmp_path):
    """Lightning logs ``train_loss`` of batch b (every log_every_n_steps) at step b, after that
    batch's update; the reading after that update is logged at the same step (issue #32 item
    8), so a step-keyed logger's rows line up: every cosmology row but the first (the initial
    weights, step 0) shares its step with a train_loss row."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    monitor = CosmologyMonitor(nn.MSELoss(), top_k=2)  # every log_every_n_steps
    fit = L.Trainer(max_steps=12, log_every_n_steps=4, accelerator="cpu", callbacks=[monitor],
                    logger=CSVLogger(tmp_path, name="", version=0), enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False)
    fit.fit(Regressor(dropout=0.0), data(n=64))
    rows = list(csv.DictReader(open(tmp_path / "version_0" / "metrics.csv")))
    loss = sorted({int(r["step"]) for r in rows if r.get("train_loss")})
    ours = sorted({int(r["step"]) for r in rows if r.get("ntk/lambda_1")})
    assert loss == [3, 7, 11] and ours == [0, 3, 7, 11]
    assert [r.step for r in monitor.tracker.history] == [0, 4, 8, 12]  # weights after n steps


def test_physics_hyperparameters_are_logged(tmp_path):
    fit = trainer(tmp_path, [CosmologyMonitor(every_n_train_steps=5)], max_steps=1)
    fit.fit(Regressor(), data())
    hparams = fit.logger.hparams
    assert hparams["cosmology/vacuum_energy"] == pytest.approx(3.0)
    assert hparams["cosmology/hubble_rate"] == pytest.approx(cosmology_of(fit.optimizers[0]).hubble_rate)


def test_default_interval_is_log_every_n_steps_and_one_probe_per_optimiser_step(tmp_path):
    monitor = CosmologyMonitor()  # no loss: NTK and H/Λ only
    fit = trainer(
        tmp_path, [monitor], max_steps=6, log_every_n_steps=3, accumulate_grad_batches=2,
        num_sanity_val_steps=2, limit_val_batches=1,
    )
    fit.fit(Regressor(), data(), data())
    assert monitor.tracker.every_n_steps == 3
    assert [r["step"] for r in monitor.tracker.history] == [0, 3, 6]
    assert "cosmology/omega_phi" not in monitor.tracker.history[-1]["scalars"]


def test_figures_are_opt_in_and_drawn_at_their_steps_and_at_the_end(tmp_path):
    for name, every, expected in (("default", None, {}), ("every4", 4, [0, 3, 7, 9])):
        L.seed_everything(0)
        monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2,
                                   log_figures_every_n_steps=every)
        trainer(tmp_path / name, [monitor]).fit(Regressor(), data())  # probes 0, 2, ..., 10
        images = events(tmp_path / name / "version_0").Tags()["images"]
        if every is None:
            assert images == []
            continue
        assert set(images) == {"figures/potential", "figures/spectrum", "figures/modes"}
        for tag in images:
            assert [e.step for e in events(tmp_path / name / "version_0").Images(tag)] == expected


@pytest.mark.parametrize("optimizer", ["cosmo", "adam"])
def test_training_is_bitwise_identical_with_and_without_the_monitor(tmp_path, optimizer):
    def run(callbacks):
        L.seed_everything(7)
        model = Regressor(optimizer, dropout=0.5)
        trainer(tmp_path, callbacks, max_steps=9).fit(model, data())
        return model.state_dict(), torch.rand(1)

    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2)
    plain, plain_rng = run([])
    watched, watched_rng = run([monitor])
    assert len(monitor.tracker.history) == 5
    assert plain.keys() == watched.keys()
    for name in plain:
        assert torch.equal(plain[name], watched[name]), name
    assert torch.equal(plain_rng, watched_rng)  # the RNG stream continues identically
    scalars = monitor.tracker.history[-1]["scalars"]
    assert "ntk/lambda_1" in scalars and "modes/amplitude_1" in scalars
    assert ("cosmology/hubble_rate" in scalars) == (optimizer == "cosmo")


def test_resume_from_ckpt_path_continues_without_gaps_or_duplicates(tmp_path):
    def monitor():
        return CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=2)

    L.seed_everything(0)
    straight = monitor()
    trainer(tmp_path / "straight", [straight], max_steps=15).fit(Regressor(dropout=0.0), data())

    L.seed_everything(0)
    saver = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    trainer(tmp_path / "resumed", [monitor(), saver], max_steps=10, enable_checkpointing=True).fit(
        Regressor(dropout=0.0), data()
    )
    ckpt = tmp_path / "ckpt" / "epoch=1-step=10.ckpt"  # saved after the monitor's step-10 probe
    resumed = monitor()
    trainer(tmp_path / "resumed", [resumed], max_steps=15).fit(
        Regressor(dropout=0.0), data(), ckpt_path=ckpt
    )
    history = [r["step"] for r in resumed.tracker.history]
    assert history == [0, 5, 10, 15]
    acc = events(tmp_path / "resumed" / "version_0")
    for tag in (*STEP_TAGS, "ntk/kernel_distance"):
        assert steps_of(acc, tag) == [0, 4, 9, 14], tag
    expected = straight.tracker.history[-1]["scalars"]
    got = resumed.tracker.history[-1]["scalars"]
    for tag in ("ntk/kernel_distance", "cosmology/efolds", "modes/initial_amplitude_2", "duality/residual"):
        assert got[tag] == pytest.approx(expected[tag], rel=1e-6, abs=1e-9), tag


def test_the_same_monitor_in_a_second_fit_reads_a_new_series_or_resumes_a_checkpoint(tmp_path):
    """A notebook habit: the monitor of a finished fit passed to a new Trainer. Without a
    checkpoint it is a new run (a new series in the new logger version); with `ckpt_path` it
    continues the checkpoint's series. Before, the second fit recorded nothing."""
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=2)
    saver = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    L.seed_everything(0)
    model = Regressor(dropout=0.0)
    trainer(tmp_path, [monitor, saver], max_steps=10, enable_checkpointing=True).fit(model, data())
    first = monitor.tracker
    trainer(tmp_path / "second", [monitor], max_steps=10).fit(model, data())
    assert monitor.tracker is not first and [r.step for r in first.history] == [0, 5, 10]
    assert [r.step for r in monitor.tracker.history] == [0, 5, 10]
    assert steps_of(events(tmp_path / "second" / "version_0"), "cosmology/efolds") == [0, 4, 9]
    trainer(tmp_path / "third", [monitor], max_steps=15).fit(
        model, data(), ckpt_path=tmp_path / "ckpt" / "epoch=1-step=10.ckpt")
    assert [r.step for r in monitor.tracker.history] == [0, 5, 10, 15]


def test_nonfinite_outputs_warn_count_and_training_continues(tmp_path):
    class Exploding(Regressor):
        def forward(self, x):
            out = self.net(x)
            return out * math.inf if not self.training and self.trainer.global_step == 5 else out

    monitor = CosmologyMonitor(every_n_train_steps=5)
    fit = trainer(tmp_path, [monitor], max_steps=10)
    with pytest.warns(RuntimeWarning, match="non-finite outputs or NTK at step 5"):
        fit.fit(Exploding(), data())
    assert fit.global_step == 10
    assert [r["step"] for r in monitor.tracker.history] == [0, 10]
    acc = events(tmp_path / "version_0")
    assert [(e.step, e.value) for e in acc.Scalars("cosmology/nonfinite")] == [(0, 0), (4, 1), (9, 1)]


def test_pytorch_lightning_variant_logs_the_same_tags(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from cosmo_optim.callbacks.pytorch_lightning import CosmologyMonitor as PLMonitor

    class PLRegressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 1)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    monitor = PLMonitor(nn.MSELoss(), every_n_train_steps=4, top_k=2)
    assert not isinstance(monitor, L.Callback) and isinstance(monitor, pl.Callback)
    fit = pl.Trainer(
        max_steps=8, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, callbacks=[monitor],
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="", version=0),
    )
    fit.fit(PLRegressor(), data())
    acc = events(tmp_path / "version_0")
    assert set(scalar_tags(2)) <= set(acc.Tags()["scalars"])
    assert steps_of(acc, "cosmology/hubble_rate") == [0, 3, 7]
    assert acc.Scalars("cosmology/hubble_rate")[0].value == pytest.approx(0.1 / (3 * 0.1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, r"Invalid top_k: 0; it must be an integer ≥ 1"),
        ({"every_n_train_steps": 0}, r"Invalid every_n_train_steps: 0"),
        ({"probe_size": 2.5}, r"Invalid probe_size: 2.5"),
        ({"prefix": 3}, r"Invalid prefix: 3; it must be a string"),
        ({"loss": "mse"}, r"Invalid loss"),
        ({"probe_batch": {"x": 1}}, r"Fix: pass probe_batch=\(inputs, targets\)"),
    ],
)
def test_invalid_arguments_are_refused_in_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosmologyMonitor(**kwargs)


def test_invalid_trainer_configuration_is_refused_in_setup(tmp_path):
    with pytest.raises(ValueError, match=r"Invalid log_figures_every_n_steps: 6; it must be a multiple of every_n_train_steps=4 .* Fix: use log_figures_every_n_steps=8"):
        CosmologyMonitor(every_n_train_steps=4, log_figures_every_n_steps=6)
    monitor = CosmologyMonitor(log_figures_every_n_steps=6)  # the interval comes from the Trainer
    with pytest.raises(ValueError, match=r"multiple of every_n_train_steps=4 .* Fix: use log_figures_every_n_steps=8"):
        trainer(tmp_path, [monitor], max_steps=1, log_every_n_steps=4).fit(Regressor(), data())

    class NoForward(Regressor):
        forward = L.LightningModule.forward

    with pytest.raises(ValueError, match=r"NoForward does not define forward\(\).*Fix"):
        trainer(tmp_path, [CosmologyMonitor()], max_steps=1).fit(NoForward(), data())


DDP_SCRIPT = """
import json, sys, torch
from pathlib import Path
from torch import nn
import lightning.pytorch as L
from lightning.pytorch.loggers import TensorBoardLogger
sys.path.insert(0, {tests!r})
from test_lightning import Regressor, data
import cosmo_optim.ntk.distributed as features
from cosmo_optim.callbacks import CosmologyMonitor

shards = []  # the probe samples [lo, hi) whose kernel features this rank computed
compute = features.FeatureMap.all
features.FeatureMap.all = lambda self, lo, hi: shards.append([lo, hi]) or compute(self, lo, hi)
L.seed_everything(0)
monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=2)
trainer = L.Trainer(
    max_steps=4, accelerator="cpu", devices={devices}, strategy={strategy!r},
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    callbacks=[monitor], logger=TensorBoardLogger({log!r}, name="", version=0),
    use_distributed_sampler={sampler},  # False: every rank trains on the same batches
)
trainer.fit(Regressor(dropout=0.0), data())
history = monitor.tracker.history
Path({results!r}, f"rank{{trainer.global_rank}}.json").write_text(json.dumps(dict(
    steps=[r.step for r in history],
    read_out=[r.scalars for r in history], metric=float(trainer.callback_metrics["ntk/lambda_1"]),
    shards=sorted(set(map(tuple, shards))), distributed=monitor.tracker.config.distributed,
    kernel=monitor.tracker.state_dict()["reference"]["kernel"].tolist())))
"""


def run_lightning_script(tmp_path: Path, results, devices: int, strategy: str,
                         sampler: bool = False) -> list[dict]:
    """Run DDP_SCRIPT in a fresh process: what each rank reports (in `results`), in rank order."""
    out_dir = tmp_path / f"{strategy}{devices}{'-sampled' if sampler else ''}"
    out_dir.mkdir()
    script = out_dir / "run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), log=str(out_dir / "logs"),
                                        devices=devices, strategy=strategy, sampler=sampler,
                                        results=str(results.directory)))
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=out_dir, env=env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return results.collect(devices, out.stderr)


@pytest.mark.slow
def test_ddp_splits_the_kernel_across_ranks_and_logs_once_from_rank_zero(tmp_path, rank_results):
    ranks = run_lightning_script(tmp_path, rank_results(), 2, "ddp")
    (single,) = run_lightning_script(tmp_path, rank_results(), 1, "auto")
    assert [r["shards"] for r in ranks] == [[[0, 8]], [[8, 16]]]  # each rank half the probe set
    assert all(r["distributed"] for r in ranks) and not single["distributed"]
    assert single["shards"] == []  # one process: the kernel is not split
    assert ranks[0]["read_out"] == ranks[1]["read_out"]  # every rank reads out the same values
    assert ranks[0]["metric"] == ranks[1]["metric"]
    assert ranks[0]["steps"] == single["steps"] == [0, 2, 4]
    for split, whole in zip(ranks[0]["read_out"], single["read_out"], strict=True):
        lam, ref = split["ntk/lambda_1"], whole["ntk/lambda_1"]  # the one-process kernel's
        assert abs(lam - ref) <= 1e-5 * abs(ref)
        assert split["ntk/sketch_dim"] == whole["ntk/sketch_dim"] == 0.0  # exact kernels
    event_files = list((tmp_path / "ddp2" / "logs").rglob("events.out.tfevents.*"))
    assert len(event_files) == 1  # only rank 0 writes
    acc = events(tmp_path / "ddp2" / "logs" / "version_0")
    assert steps_of(acc, "ntk/lambda_1") == [0, 1, 3]


@pytest.mark.slow
def test_one_and_two_processes_read_the_same_step_0_kernel(tmp_path, rank_results):
    """Under DDP's distributed sampler each rank's first batch is another half of the data
    (rank 0 samples 0, 2, 4, ...); the probe batch is the data set's first 16 samples on any
    number of processes (issue #32 item 3), so one process and two read the same kernel at
    step 0 (the same weights), entry by entry to float32 rounding, and the same λ_1."""
    ranks = run_lightning_script(tmp_path, rank_results(), 2, "ddp", sampler=True)
    (single,) = run_lightning_script(tmp_path, rank_results(), 1, "auto", sampler=True)
    one = torch.tensor(single["kernel"])
    assert one.shape == (16, 16)
    for rank in ranks:  # float32 kernels of each rank's shard: rounding alone differs
        gap = float((torch.tensor(rank["kernel"]) - one).abs().max())
        assert gap <= 1e-6 * float(one.abs().max()), gap
        step0, whole = rank["read_out"][0]["ntk/lambda_1"], single["read_out"][0]["ntk/lambda_1"]
        assert abs(step0 - whole) <= 1e-6 * whole
    print(f"step-0 kernel, 1 vs 2 processes: max |ΔΘ| = "
          f"{float((torch.tensor(ranks[0]['kernel']) - one).abs().max()):.2e} "
          f"(λ_1 {single['read_out'][0]['ntk/lambda_1']:.6g})")


BN_DDP_SCRIPT = """
import json, sys, torch
from pathlib import Path
from torch import nn
import lightning.pytorch as L
from lightning.pytorch.loggers import TensorBoardLogger
sys.path.insert(0, {tests!r})
from test_lightning import Regressor, data
from cosmo_optim import empirical_ntk
from cosmo_optim.callbacks import CosmologyMonitor

class Normed(Regressor):
    def __init__(self):
        super().__init__(dropout=0.0)
        self.net = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))

L.seed_everything(0)
monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=2)
trainer = L.Trainer(
    max_steps=4, accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False,
    enable_model_summary=False, enable_checkpointing=False, callbacks=[monitor],
    logger=TensorBoardLogger({log!r}, name="", version=0),
)
model = Normed()
trainer.fit(model, data())  # each rank's batches differ: so do its BatchNorm statistics
x = monitor.tracker.probe_batch[0]
own = float(torch.linalg.eigvalsh(empirical_ntk(model, x).double())[-1])  # this rank's buffers
Path({results!r}, f"rank{{trainer.global_rank}}.json").write_text(json.dumps(dict(own=own,
    mean=float(model.net[1].running_mean.sum()), read_out=monitor.tracker.history[-1].scalars)))
"""


@pytest.mark.slow
def test_ddp_with_batchnorm_probes_rank_zero_s_buffers_on_every_rank(tmp_path, rank_results):
    """Between forwards each rank's running statistics come from its own batches; DDP takes
    rank 0's before each forward, and so does the probe: both ranks log the kernel of rank
    0's model (to 1e-5 of rank 0's own single-process kernel), and their own are kept."""
    script, results = tmp_path / "bn.py", rank_results()
    script.write_text(BN_DDP_SCRIPT.format(tests=str(Path(__file__).parent), log=str(tmp_path / "logs"),
                                           results=str(results.directory)))
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = results.collect(2, out.stderr)
    assert ranks[0]["mean"] != ranks[1]["mean"]  # the ranks' buffers differ, and are kept
    assert ranks[0]["own"] != pytest.approx(ranks[1]["own"], rel=1e-6)
    assert ranks[0]["read_out"] == ranks[1]["read_out"]
    assert ranks[0]["read_out"]["ntk/lambda_1"] == pytest.approx(ranks[0]["own"], rel=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_server_serves_the_scalar_tags(tmp_path):
    fit = trainer(tmp_path, [CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=2)])
    fit.fit(Regressor(), data())
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false", "--reload_interval=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"
        deadline, tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/tags", timeout=5) as response:
                    tags = json.load(response)
                if tags.get("version_0", {}).get("ntk/lambda_1"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert set(scalar_tags(2)) <= set(tags["version_0"])
        with urllib.request.urlopen(f"{base}/scalars?run=version_0&tag=cosmology/hubble_rate", timeout=5) as r:
            points = json.load(r)
        assert [p[1] for p in points] == [0, 4, 9]
        assert points[0][2] == pytest.approx(cosmology_of(fit.optimizers[0]).hubble_rate)
    finally:
        server.terminate()
        server.wait(timeout=20)


def _pl_regressor():
    pl = pytest.importorskip("pytorch_lightning")

    class PLRegressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 1)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    return pl, PLRegressor


def test_namespace_mix_up_is_an_error_naming_the_right_import(tmp_path):
    pl, PLRegressor = _pl_regressor()
    fit = pl.Trainer(max_steps=2, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, callbacks=[CosmologyMonitor(every_n_train_steps=1)],
                     logger=pl.loggers.TensorBoardLogger(tmp_path, name="", version=0))
    with pytest.raises(Exception, match=r"was given a pytorch_lightning.Trainer.*Fix: from cosmo_optim.callbacks.pytorch_lightning import CosmologyMonitor"):
        fit.fit(PLRegressor(), data())
    from cosmo_optim.callbacks.pytorch_lightning import CosmologyMonitor as PLMonitor

    with pytest.raises(Exception, match=r"was given a lightning.pytorch.Trainer.*Fix: from cosmo_optim.callbacks import CosmologyMonitor"):
        PLMonitor(every_n_train_steps=1).setup(trainer(tmp_path), Regressor(), "fit")


def test_a_trainer_without_logger_is_refused_like_learning_rate_monitor(tmp_path):
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match=r"Cannot use `CosmologyMonitor` callback with `Trainer` that has no logger. Fix"):
        trainer(tmp_path, [CosmologyMonitor(every_n_train_steps=1)], logger=False).fit(Regressor(), data())


def test_state_key_includes_the_configuration_and_two_monitors_resume_separately(tmp_path):
    def monitors():
        return [CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=2, prefix="a/"),
                CosmologyMonitor(nn.MSELoss(), every_n_train_steps=5, top_k=1, prefix="b/")]

    first = monitors()
    assert first[0].state_key != first[1].state_key
    assert first[0].state_key.startswith("CosmologyMonitor{") and "'top_k': 2" in first[0].state_key
    saver = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    L.seed_everything(0)
    trainer(tmp_path / "one", [*first, saver], max_steps=5, enable_checkpointing=True).fit(Regressor(dropout=0.0), data())
    ckpt = torch.load(tmp_path / "ckpt" / "epoch=0-step=5.ckpt", weights_only=False)
    assert {first[0].state_key, first[1].state_key} <= set(ckpt["callbacks"])
    second = monitors()
    L.seed_everything(0)
    trainer(tmp_path / "two", second, max_steps=10).fit(Regressor(dropout=0.0), data(),
                                                        ckpt_path=tmp_path / "ckpt" / "epoch=0-step=5.ckpt")
    for monitor, prefix in zip(second, ("a/", "b/"), strict=True):
        assert [r.step for r in monitor.tracker.history] == [0, 5, 10]
        assert all(k.startswith(prefix) for k in monitor.tracker.history[0].scalars)


def _hparams_of(log_dir) -> set[str]:
    """The hyperparameter names of the last HParams session written to TensorBoard."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":  # TensorBoard keeps the first
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    return set(data.session_start_info.hparams)
    return set()


@pytest.mark.parametrize("save", [True, False])
def test_physics_hyperparameters_merge_with_the_module_s(tmp_path, save):
    class Saving(Regressor):
        def __init__(self, width: int = 16):
            super().__init__()
            if save:
                self.save_hyperparameters()

    trainer(tmp_path, [CosmologyMonitor(every_n_train_steps=2)], max_steps=2).fit(Saving(), data())
    names = _hparams_of(tmp_path / "version_0")
    assert {"cosmology/lr", "cosmology/hubble_rate", "cosmo_optim/top_k"} <= names
    assert ("width" in names) == save


def test_efolds_count_only_the_observed_optimiser_s_steps_under_manual_optimisation(tmp_path):
    class TwoOptimisers(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.net, self.other = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            for opt, module in zip(self.optimizers(), (self.net, self.other), strict=True):
                opt.zero_grad()
                self.manual_backward(nn.functional.mse_loss(module(x), y))
                opt.step()

        def configure_optimizers(self):
            return (torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.7),
                    torch.optim.SGD(self.other.parameters(), lr=0.01, momentum=0.7))

    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=1)
    with pytest.warns(UserWarning, match="2 optimisers; the universe and the e-folds are read from the first one"):
        fit = trainer(tmp_path, [monitor], max_steps=8)
        fit.fit(TwoOptimisers(), data())
    assert fit.global_step == 8  # Lightning counts both optimisers' steps: 4 batches
    last = monitor.tracker.history[-1]
    assert last.step == 8 and last.scalars["cosmology/efolds"] == pytest.approx(4 * 0.3 / 3)


def test_dir_lists_the_lazy_callbacks():
    import cosmo_optim.callbacks as callbacks

    assert {"CosmologyCallback", "CosmologyMonitor"} <= set(dir(callbacks))


def test_a_loss_class_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"the class CrossEntropyLoss, not an instance. Fix: pass CrossEntropyLoss\(\)"):
        CosmologyMonitor(nn.CrossEntropyLoss)


@pytest.mark.parametrize("name", ["FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"])
def test_a_strategy_that_shards_parameters_is_refused_at_setup(tmp_path, monkeypatch, name):
    """Each needs a GPU (or DeepSpeed) to be built, so the Trainer is given an instance made
    without its __init__: the check is an isinstance against Lightning's own classes."""
    import lightning.pytorch.strategies as strategies
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    cls = getattr(strategies, name)
    fit = L.Trainer(accelerator="cpu", logger=TensorBoardLogger(str(tmp_path)))
    monkeypatch.setattr(L.Trainer, "strategy", property(lambda self: cls.__new__(cls)))
    monkeypatch.setattr(L.Trainer, "world_size", property(lambda self: 2))
    with pytest.raises(MisconfigurationException, match=rf"{name} shards the parameters.*Fix: use strategy='ddp'"):
        CosmologyMonitor().setup(fit, Regressor(), "fit")
