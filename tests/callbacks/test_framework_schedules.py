"""Lightning and the Hugging Face Trainer step the scheduler before their step-end hooks: the
monitor still reads each probe's universe from the (lr, β) the step used (T3, T9), checked
against a hand computation from the lr sequence recorded by the optimiser's own pre-step hook."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from cosmo_optim.callbacks import CosmologyCallback, CosmologyMonitor

STEPS, EVERY, BETA = 10, 2, 0.9


def record_used(opt, used):
    """The lr and momentum of group 0 as each step starts: what that step used."""
    opt.register_step_pre_hook(
        lambda o, a, k: used.append((o.param_groups[0]["lr"], o.param_groups[0]["momentum"])))


def check(history, used):
    """Every probe against H_n = (1 − β_n)/(3 sqrt(lr_n)) and Σ_{m ≤ n} (1 − β_m)/3 (T9: every
    step counts, lr_m = 0 included)."""
    assert [r.step for r in history] == list(range(0, STEPS + 1, EVERY))
    assert len(used) == STEPS
    for record in history:
        lr, beta = used[max(record.step, 1) - 1]
        s = {k.removeprefix("train/"): v for k, v in record.scalars.items()}
        efolds = sum((1 - b) / 3 for _, b in used[:record.step])
        if lr == 0:
            assert "cosmology/hubble_rate" not in s, record.step
            continue
        assert s["cosmology/hubble_rate"] == pytest.approx((1 - beta) / (3 * math.sqrt(lr)),
                                                           rel=1e-12), record.step
        assert s["cosmology/efolds"] == pytest.approx(efolds, rel=1e-12, abs=1e-15), record.step


def test_lightning_reads_the_lr_each_step_used_under_a_warm_up_and_decay(tmp_path,
                                                                       regression_module):
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    used: list[tuple[float, float]] = []

    def configure(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=BETA)
        record_used(opt, used)
        ramp = lr_scheduler.LambdaLR(  # warm-up from 0, then linear decay to 0
            opt, lambda n: n / 3 if n < 3 else max(0.0, (STEPS - n) / (STEPS - 3)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}

    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 3, generator=g)
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=EVERY, top_k=1)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=CSVLogger(tmp_path),
                        callbacks=[monitor], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(regression_module(configure), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    assert monitor.tracker is not None
    check(monitor.tracker.history, used)


def test_huggingface_linear_schedule_with_warm_up_reads_the_lr_each_step_used(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x, labels=None):
            logits = self.net(x)
            if labels is None:  # the monitor's probe
                return {"logits": logits}
            return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    class Examples(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)

        def __len__(self):
            return 32

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=BETA)
    used: list[tuple[float, float]] = []
    record_used(opt, used)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, logging_steps=EVERY, warmup_steps=3,
        lr_scheduler_type="linear", per_device_train_batch_size=8, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Examples(),
                                   optimizers=(opt, None))
    callback = CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2, trainer=trainer)
    trainer.add_callback(callback)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert callback.tracker is not None
    check(callback.tracker.history, used)
    assert "cosmology/hubble_rate" in callback.tracker.history[-1].scalars  # lr_10 > 0
