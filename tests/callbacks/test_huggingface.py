"""`CosmologyCallback` under a real ``transformers.Trainer`` (tiny models built from configs)."""

from __future__ import annotations

import math
import os
import types
import warnings

import pytest
import torch
from torch import nn

if os.environ.get("CI"):  # CI installs the hf extra (.ci/run): there these tests never skip
    import accelerate  # noqa: F401
    import transformers
else:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cosmo_optim import cosmology_of
from cosmo_optim.callbacks import CosmologyCallback
from cosmo_optim.monitor import scalar_tags


class Classifier(nn.Module):
    """Any module returning {"loss", "logits"} trains under `transformers.Trainer`; it records
    the keyword inputs it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        self.seen: set[str] = set()

    def forward(self, x, labels=None, mask=None):
        self.seen |= {"mask"} if mask is not None else set()
        logits = self.net(x if mask is None else x * mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Examples(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, mask: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.mask = (torch.rand(n, 4, generator=g) > 0.3).float() if mask else None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        item = {"x": self.x[i], "labels": self.y[i]}
        if self.mask is not None:
            item["mask"] = self.mask[i]
        return item


def run(tmp_path, max_steps=6, resume=None, save_steps=None, dataset=None, model=None,
        options=None, **kwargs):
    """A 6-step Classifier run, the callback added as
    ``trainer.add_callback(CosmologyCallback(..., trainer=trainer))`` with `options`."""
    torch.manual_seed(0)
    model = model or Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, logging_steps=kwargs.pop("logging_steps", 3),
        per_device_train_batch_size=kwargs.pop("per_device_train_batch_size", 8), report_to=kwargs.pop("report_to", ["tensorboard"]),
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        use_cpu=True, disable_tqdm=True, lr_scheduler_type="constant", seed=0, **kwargs,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset or Examples(),
                                   optimizers=(opt, None))
    callback = CosmologyCallback(**{"loss": nn.CrossEntropyLoss(), "input_key": "x", "top_k": 2,
                                    **(options or {})}, trainer=trainer)
    trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback, opt


def reporting_to(tmp_path, integration):
    """A 6-step Classifier Trainer (SGD, momentum 0.9) whose only reporting integration is
    `integration`; the monitor not yet added."""
    torch.manual_seed(0)
    model = Classifier()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, logging_steps=3, per_device_train_batch_size=8,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    return transformers.Trainer(
        model=model, args=args, train_dataset=Examples(), callbacks=[integration],
        optimizers=(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None))


def series(trainer):
    """The monitor's rows of `state.log_history`: (step, {tag: value})."""
    return [(e["step"], {k: v for k, v in e.items() if "/" in k})
            for e in trainer.state.log_history if "cosmology/nonfinite" in e]


def test_scalars_reach_log_history_and_the_trainer_s_tensorboard_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer, callback, opt = run(tmp_path)
    assert [r.step for r in callback.tracker.history] == [0, 3, 6]
    logged = series(trainer)
    assert [step for step, _ in logged] == [0, 3, 6]
    assert set(scalar_tags(2, outputs=3)) <= set(logged[-1][1])
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "train/loss" in tags  # the Trainer's own run: the cosmology sits beside the loss
    assert {"train/" + t for t in scalar_tags(2, outputs=3)} <= tags
    assert "train/duality/log10_relative_residual" in tags  # and the charts' log10 views
    hubble = acc.Scalars("train/cosmology/hubble_rate")
    assert [e.step for e in hubble] == [0, 3, 6]  # the Trainer's own step, as train/loss's
    assert {e.step for e in acc.Scalars("train/loss")} <= {e.step for e in hubble}
    assert hubble[0].value == pytest.approx(cosmology_of(opt).hubble_rate)
    assert "train/ntk/spectrum" in acc.Tags()["histograms"]  # beside its scalars (issue #21)


@pytest.mark.parametrize("restore", [False, True])
def test_interrupted_and_resumed_run_logs_the_same_series_as_an_uninterrupted_one(tmp_path,
                                                                                   restore):
    """Also where transformers restores callback states itself (it rebuilds each stateful
    callback from JSON: the monitor's holder, not the monitor)."""
    straight, _, _ = run(tmp_path / "a", max_steps=12, report_to=[])
    run(tmp_path / "b", max_steps=12, save_steps=6, report_to=[])  # leaves checkpoint-6
    resumed, callback, _ = run(tmp_path / "c", max_steps=12, report_to=[], save_steps=6,
                               resume=str(tmp_path / "b" / "checkpoint-6"),
                               restore_callback_states_from_checkpoint=restore)
    assert callback in resumed.callback_handler.callbacks  # not replaced by a rebuilt one
    expected = series(straight)
    got = series(resumed)  # the checkpoint's log history, then the resumed run's rows
    assert [s for s, _ in got] == [s for s, _ in expected] == [0, 3, 6, 9, 12]
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12) or (math.isnan(a[key]) and math.isnan(b[key])), key
    assert got[-1][1]["cosmology/efolds"] == pytest.approx(12 * 0.1 / 3)
    assert [r.step for r in callback.tracker.history] == [0, 3, 6, 9, 12]


def test_a_second_train_call_reads_a_new_series(tmp_path):
    """trainer.train() twice on one Trainer (a fresh run each time, global_step from 0): the
    second is a new series, not the first one's state restored (which recorded nothing)."""
    trainer, callback, _ = run(tmp_path, report_to=[])
    first = callback.tracker
    trainer.train()
    assert callback.tracker is not first and [r.step for r in first.history] == [0, 3, 6]
    assert [r.step for r in callback.tracker.history] == [0, 3, 6]
    assert [step for step, _ in series(trainer)] == [0, 3, 6]


def test_the_tensorboard_scalars_share_the_trainer_s_default_run(tmp_path, monkeypatch):
    """No TENSORBOARD_LOGGING_DIR: the Trainer writes to output_dir/runs/<time>_<host>, and so
    do the monitor's scalars and extras (through the Trainer's own integration: no guess)."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    run(tmp_path)
    made = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(made) == 1, made
    acc = EventAccumulator(str(made[0]), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"train/loss", "train/cosmology/hubble_rate"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/cosmology/hubble_rate")] == [0, 3, 6]


def test_the_scalars_reach_every_integration_but_not_the_console(tmp_path, capsys):
    """report_to=["tensorboard"] plus an integration of another kind (a TensorBoardCallback
    subclass standing in for W&B or MLflow: nothing is installed or sent): both get every
    reading's 20-odd scalars in on_log; the Trainer's console printer (disable_tqdm: it prints
    every log) gets none of them, and Trainer.log is never called with them."""
    received: list[tuple[int, set[str]]] = []

    class Service(transformers.integrations.TensorBoardCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            received.append((state.global_step, set(logs or {})))

    trainer = reporting_to(tmp_path, Service())
    logged = []
    original = trainer.log
    trainer.log = lambda logs, *a, **kw: (logged.append(set(logs)), original(logs, *a, **kw))
    trainer.add_callback(CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2,
                                           trainer=trainer))
    trainer.train()
    ours = [step for step, keys in received if "ntk/lambda_1" in keys]
    assert ours == [0, 3, 6]
    assert all(len(keys) > 20 for _, keys in received if "ntk/lambda_1" in keys)
    assert not any("ntk/lambda_1" in keys for keys in logged)
    printed = capsys.readouterr().out
    assert "'loss'" in printed and "cosmology/" not in printed  # the Trainer's own rows only


def test_nothing_the_trainer_does_is_altered(tmp_path):
    """Its own log rows (loss, learning rate, grad norm at steps 3 and 6), its checkpoints and
    the weights are those of a run without the callback."""

    def own(trainer):
        keep = ("loss", "learning_rate", "grad_norm", "epoch", "step")
        return [{k: v for k, v in e.items() if k in keep} for e in trainer.state.log_history
                if "cosmology/nonfinite" not in e and "train_runtime" not in e]

    torch.manual_seed(0)
    model = Classifier()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "plain"), max_steps=6, logging_steps=3, report_to=[],
        per_device_train_batch_size=8, save_strategy="steps", save_steps=3, use_cpu=True,
        disable_tqdm=True, lr_scheduler_type="constant", seed=0)
    plain = transformers.Trainer(model=model, args=args, train_dataset=Examples(), optimizers=(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None))
    plain.train()
    trainer, _, _ = run(tmp_path / "watched", report_to=[], save_steps=3)
    assert own(trainer) == own(plain)
    assert sorted(p.name for p in (tmp_path / "watched").iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-3", "checkpoint-6"]
    for a, b in zip(trainer.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("trainer", [None, object(), "other"])
def test_a_callback_without_its_trainer_or_with_another_is_refused(tmp_path, trainer):
    if trainer == "other":
        other, _, _ = run(tmp_path / "other", max_steps=1, report_to=[])
        callback = CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2, trainer=other)
        ours = transformers.Trainer(model=Classifier(), args=other.args, train_dataset=Examples(),
                                    callbacks=[callback])
        with pytest.raises(ValueError, match=r"trainer= is not the Trainer running this callback\. Fix: trainer\.add_callback"):
            ours.train()
    else:
        # the former way in, Trainer(callbacks=[CosmologyCallback(...)]), is this error
        why = (r"none: Trainer\(callbacks=\[CosmologyCallback\(\.\.\.\)\]\) cannot give the "
               r"callback its Trainer" if trainer is None else r"<object object at")
        with pytest.raises(ValueError, match=rf"Invalid trainer: {why}.*; it must be the transformers\.Trainer the callback is added to\. Fix: trainer\.add_callback\(CosmologyCallback\(\.\.\., trainer=trainer\)\)"):
            CosmologyCallback(trainer=trainer)


def hf(tmp_path, model, data, *, lr=0.01, max_steps=2, logging_steps=1, batch=4, sgd=True,
       **options):
    """A Trainer of `model` on `data` (SGD with momentum 0.9, or the default AdamW) and the
    callback with `options`, added with trainer=; not trained yet."""
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, logging_steps=logging_steps,
        per_device_train_batch_size=batch, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if sgd else None
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   optimizers=(opt, None))
    callback = CosmologyCallback(**options, trainer=trainer)
    trainer.add_callback(callback)
    return trainer, callback


def test_probe_batch_keeps_every_model_input(tmp_path):
    trainer, callback, _ = run(tmp_path, max_steps=3, report_to=[], dataset=Examples(mask=True))
    assert "mask" in trainer.model.seen and callback.tracker.history[0].step == 0


def test_a_tiny_gpt2_with_padded_batches_is_probed_with_its_attention_mask(tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=11, n_positions=8)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(1, 11, (8, 5))
    mask = torch.ones_like(ids)
    mask[::2, 3:] = 0  # padded rows
    probe = {"input_ids": ids, "attention_mask": mask}
    calls = []
    model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("attention_mask")), with_kwargs=True)
    data = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": ids[i]} for i in range(8)]
    trainer, callback = hf(tmp_path, model, data, loss=None, probe_batch=probe, probe_size=4,
                           top_k=2)
    trainer.train()
    assert [r.step for r in callback.tracker.history] == [0, 1, 2]
    assert any(m is not None and m.shape[0] <= 4 and (m == 0).any() for m in calls)
    assert math.isfinite(callback.tracker.history[-1].scalars["ntk/lambda_1"])


def test_output_selects_a_few_logits_of_a_language_model(tmp_path):
    """A language model's logits are (N, T, V): `output=` picks the last token's first two,
    and the first reading's λ_1 is that of the brute-force kernel of those two outputs."""
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=11, n_positions=8)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, 11, (4, 5))
    rows = []  # ∂f_(i,c)/∂θ by plain autograd, one output component at a time
    for i in range(4):
        for c in range(2):
            model.zero_grad()
            model(ids[i : i + 1]).logits[0, -1, c].backward()
            rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    J = torch.stack(rows).double()
    lam_1 = float(torch.linalg.eigvalsh(J @ J.T)[-1])
    data = [{"input_ids": ids[i], "labels": ids[i]} for i in range(4)]
    trainer, callback = hf(tmp_path, model, data, lr=0.0, max_steps=1, loss=None,
                           probe_batch={"input_ids": ids}, probe_size=4, top_k=2,
                           output=lambda out: out.logits[:, -1, :2])
    trainer.train()
    first = callback.tracker.history[0].scalars
    assert first["ntk/lambda_1"] == pytest.approx(lam_1, rel=1e-4)
    assert first["ntk/sketch_dim"] == 0.0


def test_adamw_warns_once_truly_and_logs_no_hubble_rate(tmp_path):
    """AdamW with a warm-up from lr = 0: one warning, which promises only tags that are logged
    (no cosmology/field for 3 outputs), and no lr = 0 warning with its e-folds (no dual is
    lost)."""
    torch.manual_seed(0)
    trainer, callback = hf(tmp_path, Classifier(), Examples(), sgd=False, max_steps=6,
                           logging_steps=3, batch=8, loss=nn.CrossEntropyLoss(), input_key="x",
                           top_k=2)
    trainer.args.warmup_steps = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    ours = [str(w.message) for w in caught if "CosmologyTracker" in str(w.message)]
    assert len(ours) == 1 and "no de Sitter dual for AdamW" in ours[0], ours
    promised = set(ours[0].split("still logged: ")[1].split(" (")[0].split(", "))
    logged = {t for r in callback.tracker.history for t in r.scalars}
    assert promised <= logged, promised - logged
    assert "cosmology/field" not in promised and "duality/relative_residual" in promised
    assert "(1 − β)/3" not in ours[0] and "lr = 0" not in ours[0]  # no e-fold talk for AdamW
    assert "cosmology/hubble_rate" not in logged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probe_batch": {"x": torch.zeros(2, 4)}}, r"no key 'input_ids'.* Fix: pass input_key="),
        ({"loss": nn.CrossEntropyLoss}, r"the class CrossEntropyLoss, not an instance. Fix: pass CrossEntropyLoss\(\)"),
        ({"top_k": 0}, r"Invalid top_k: 0"),
        ({"every_n_steps": 0}, r"Invalid every_n_steps: 0"),
    ],
)
def test_invalid_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosmologyCallback(**kwargs)


def test_a_loss_that_does_not_fit_the_logits_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"the loss MSELoss does not give one value per sample on the model's outputs of shape \(16, 3\) .*Fix: pass the loss the model is trained with"):
        run(tmp_path, max_steps=1, report_to=[], options={"loss": nn.MSELoss()})


HF_DDP_SCRIPT = """
import json, sys, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
import cosmo_optim.ntk.distributed as features
from test_huggingface import run, series

shards = []  # the probe samples [lo, hi) whose kernel features this rank computed
compute = features.FeatureMap.all
features.FeatureMap.all = lambda self, lo, hi: shards.append([lo, hi]) or compute(self, lo, hi)
trainer, callback, _ = run(Path({out!r}), report_to=[], ddp_backend="gloo")
Path({results!r}, f"rank{{trainer.args.process_index}}.json").write_text(json.dumps(dict(
    series=series(trainer), shards=sorted(set(map(tuple, shards))),
    distributed=callback.tracker.config.distributed)))
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.path.insert(0, {root!r})
from gloo_ranks import exit_rank
exit_rank()  # gloo threads winding down in the interpreter's teardown can abort the process
"""


@pytest.mark.slow
def test_torchrun_ddp_splits_the_probe_kernel_across_ranks(tmp_path, rank_results):
    """Two gloo ranks under torchrun: each computes the kernel features of half the probe
    batch, both log the same read-out, and the first probe (same weights everywhere) equals
    the one-process run's."""
    import subprocess
    import sys
    from pathlib import Path

    script, results = tmp_path / "ddp.py", rank_results()
    script.write_text(HF_DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "out"),
                                        results=str(results.directory),
                                        root=str(Path(__file__).parents[1])))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = results.collect(2, out.stderr)
    assert [r["shards"] for r in ranks] == [[[0, 8]], [[8, 16]]]  # each rank half the probe batch
    assert all(r["distributed"] for r in ranks)
    assert ranks[0]["series"] == ranks[1]["series"]  # every rank reads out the same values
    trainer, callback, _ = run(tmp_path / "single", report_to=[])
    assert not callback.tracker.config.distributed
    (step, split), (_, whole) = ranks[0]["series"][0], series(trainer)[0]
    assert step == 0 and split["ntk/sketch_dim"] == whole["ntk/sketch_dim"] == 0.0
    assert split["ntk/lambda_1"] == pytest.approx(whole["ntk/lambda_1"], rel=1e-5)


def test_labels_of_the_wrong_length_are_an_error_naming_both_lengths():
    batch = {"x": torch.randn(8, 4), "labels": torch.zeros(5, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"5 'labels' for 8 'x' rows.*Fix: one row"):
        CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", probe_batch=batch)


def test_a_probe_far_costlier_than_a_training_step_warns_once(tmp_path):
    """N·C = 32·3 per-output gradients against 1 sample a step: ≈ 96 training steps a probe."""
    with pytest.warns(UserWarning, match=r"≈ 96 training steps") as caught:
        run(tmp_path, max_steps=3, report_to=[], per_device_train_batch_size=1,
            options={"probe_size": 32})
    assert len([w for w in caught if "training steps" in str(w.message)]) == 1


def test_figures_without_a_logger_that_takes_them_warn_once_naming_what_is_dropped(tmp_path):
    with pytest.warns(UserWarning, match="are not sent to") as caught:
        run(tmp_path, report_to=[], options={"log_figures_every_n_steps": 3})
    dropped = [str(w.message) for w in caught if "are not sent to" in str(w.message)]
    assert len(dropped) == 1 and "report_to=[]" in dropped[0], dropped
    assert "figures/spectrum" in dropped[0] and "log_figures_every_n_steps=None" in dropped[0]


def test_figures_go_to_a_reporting_integration_s_image_api(tmp_path):
    """transformers' WandbCallback keeps the wandb module as ``_wandb``: figures go through its
    ``log`` and ``Image``, the scalars through its on_log (a recording stand-in for the module;
    the callback made without its __init__, which imports wandb: nothing is installed or sent)."""
    logged: list[tuple[str, int, tuple]] = []

    class Wandb:
        Image = staticmethod(lambda pixels: pixels)
        run = types.SimpleNamespace(summary={})

        @staticmethod
        def log(row, **kwargs):
            step = row.pop("train/global_step")
            logged.extend((tag, step, getattr(v, "shape", None)) for tag, v in row.items())

    Reporting = transformers.integrations.WandbCallback.__new__
    reporting = Reporting(transformers.integrations.WandbCallback)
    reporting._wandb, reporting._initialized = Wandb, True
    reporting._log_model = types.SimpleNamespace(is_enabled=False)
    trainer = reporting_to(tmp_path, reporting)
    trainer.add_callback(CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2,
                                           log_figures_every_n_steps=3, trainer=trainer))
    trainer.train()
    figures = [(tag, step, shape) for tag, step, shape in logged if "figures/" in tag]
    assert {tag for tag, _, _ in figures} == {  # beside W&B's train/ scalars (rewrite_logs)
        "train/figures/potential", "train/figures/spectrum", "train/figures/modes"}
    assert {step for _, step, _ in figures} == {0, 3, 6}
    assert all(shape[1] >= 800 and shape[2] == 3 for _, _, shape in figures)  # readable
    assert {step for tag, step, _ in logged if tag == "train/ntk/lambda_1"} == {0, 3, 6}


def test_a_fractional_logging_steps_is_the_trainer_s_share_of_max_steps(tmp_path):
    """logging_steps=0.5 of 6 steps: the Trainer logs every 3 steps, and so does the monitor."""
    _, callback, _ = run(tmp_path, logging_steps=0.5, report_to=[])
    assert [r.step for r in callback.tracker.history] == [0, 3, 6]


def test_logging_by_epoch_warns_that_readings_follow_logging_steps(tmp_path):
    with pytest.warns(UserWarning, match=r"logging_strategy='epoch'.*every_n_steps"):
        run(tmp_path, logging_strategy="epoch", report_to=[])


def test_a_trainer_whose_log_flushes_its_own_metrics_keeps_them_in_its_own_rows(tmp_path):
    """A Trainer subclass that adds its gathered metrics in log() and clears them (TRL's
    trainers do): with trainer=, the monitor's rows must not take them from the loss rows."""

    class Gathering(transformers.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.gathered: list[float] = []

        def training_step(self, *args, **kwargs):
            self.gathered.append(1.0)
            return super().training_step(*args, **kwargs)

        def log(self, logs, *args, **kwargs):
            extra = {"gathered": float(len(self.gathered))} if self.gathered else {}
            self.gathered.clear()
            super().log({**logs, **extra}, *args, **kwargs)

    torch.manual_seed(0)
    model = Classifier()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, logging_steps=3, per_device_train_batch_size=8,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Gathering(model=model, args=args, train_dataset=Examples(), optimizers=(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None))
    trainer.add_callback(CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2,
                                           trainer=trainer))
    trainer.train()
    rows = trainer.state.log_history
    assert [r.get("gathered") for r in rows if "loss" in r] == [3.0, 3.0]
    assert not any("gathered" in r for r in rows if "cosmology/nonfinite" in r)
