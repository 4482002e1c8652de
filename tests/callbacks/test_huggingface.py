"""`CosmologyCallback` in a real `transformers.Trainer` run (skipped without the `hf` extra)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers.Trainer needs it
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from cosmo_optim import cosmology_of  # noqa: E402
from cosmo_optim.callbacks import CosmologyCallback  # noqa: E402
from cosmo_optim.monitor import scalar_tags  # noqa: E402


class Classifier(nn.Module):
    """Any module returning {"loss", "logits"} trains under `transformers.Trainer`."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Examples(torch.utils.data.Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def test_trainer_run_logs_tags_steps_and_the_optimiser_s_hubble_rate(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, logging_steps=3,
        per_device_train_batch_size=8, report_to=["tensorboard"], save_strategy="no",
        use_cpu=True, disable_tqdm=True, lr_scheduler_type="constant",
    )
    callback = CosmologyCallback(nn.CrossEntropyLoss(), input_key="x", top_k=2)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Examples(), optimizers=(opt, None),
        callbacks=[callback],
    )
    trainer.train()
    assert [r["step"] for r in callback.tracker.history] == [0, 3, 6]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert set(scalar_tags(2, outputs=3)) <= set(acc.Tags()["scalars"])
    hubble = acc.Scalars("cosmology/hubble_rate")
    assert [e.step for e in hubble] == [0, 3, 6]
    assert hubble[0].value == pytest.approx(cosmology_of(opt).hubble_rate)


def test_probe_batch_without_the_input_key_names_the_fix():
    with pytest.raises(ValueError, match=r"no 'input_ids' key .* Fix: pass input_key="):
        CosmologyCallback(probe_batch={"x": torch.zeros(2, 4)})
