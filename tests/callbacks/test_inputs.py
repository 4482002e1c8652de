"""Inputs and loggers as users have them, in real Lightning and Hugging Face runs (issue #21
item 6): dict batches, tuples of float64 NumPy arrays into a float32 model, labels of the wrong
length, the probe-cost warning, and figures through W&B-like, MLflow-like and CSV loggers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger, Logger  # noqa: E402

from cosmo_optim.callbacks import CosmologyMonitor  # noqa: E402
from cosmo_optim.monitor.tags import FIGURE_TAGS  # noqa: E402


class Pairs(Dataset):
    """(x, y) regression pairs as dicts {"signal", "target"} or as float64 NumPy arrays."""

    def __init__(self, kind: str, n: int = 32) -> None:
        g = np.random.default_rng(0)
        self.x, self.kind = g.standard_normal((n, 3)), kind
        self.y = self.x.sum(1, keepdims=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        if self.kind == "dict":
            return {"signal": torch.tensor(self.x[i]).float(), "target": torch.tensor(self.y[i]).float()}
        return self.x[i], self.y[i]


def numpy_batches(items):
    return np.stack([x for x, _ in items]), np.stack([y for _, y in items])  # float64


class Module(L.LightningModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))  # float32

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.kind == "dict":
            x, y = batch["signal"], batch["target"]
        else:
            x, y = (torch.as_tensor(a, dtype=torch.float32) for a in batch)
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class ImageLogger(Logger):
    """The image APIs of Lightning's WandbLogger (``log_image``) or MLFlowLogger
    (``experiment.log_figure(run_id, figure, artifact_file)``), recording what they get."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, int, tuple]] = []

    name = property(lambda self: "fake")
    version = property(lambda self: 0)

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class WandbLike(ImageLogger):
    def log_image(self, key, images, step=None, **kwargs):
        self.images += [(key, step, np.asarray(image).shape) for image in images]


class MLflowLike(ImageLogger):
    run_id = property(lambda self: "run-1")

    @property
    def experiment(self):
        logger = self

        class Client:
            def log_figure(self, run_id, figure, artifact_file):
                assert run_id == "run-1"
                logger.images.append((artifact_file, None, tuple(figure.get_size_inches())))

        return Client()


def fit(tmp_path, kind, loggers, steps=4, **monitor_kwargs):
    torch.manual_seed(0)
    collate = numpy_batches if kind == "numpy" else None
    loader = DataLoader(Pairs(kind), batch_size=8, collate_fn=collate)
    monitor = CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=2, **monitor_kwargs)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=loggers, callbacks=[monitor],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Module(kind), loader)
    return monitor, [str(w.message) for w in caught if "CosmologyTracker" in str(w.message)
                     or "CosmologyMonitor" in str(w.message)]


def test_lightning_dict_batches_by_input_key_and_label_key(tmp_path):
    monitor, _ = fit(tmp_path, "dict", CSVLogger(tmp_path), input_key="signal",
                     label_key="target")
    assert [r.step for r in monitor.tracker.history] == [0, 2, 4]
    assert "cosmology/omega_phi" in monitor.tracker.history[-1].scalars  # the loss had targets
    inputs, targets = monitor.tracker.probe_batch  # the data set's first 16 samples
    assert inputs.args[0].shape == (16, 3) and targets.shape == (16, 1)


def test_lightning_tuples_of_float64_numpy_arrays_probe_a_float32_model(tmp_path):
    monitor, _ = fit(tmp_path, "numpy", CSVLogger(tmp_path))
    assert [r.step for r in monitor.tracker.history] == [0, 2, 4]
    inputs, _ = monitor.tracker.probe_batch
    assert inputs.args[0].dtype == torch.float64  # kept as given; cast at each probe
    assert next(monitor.tracker.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("logger_cls", [WandbLike, MLflowLike])
def test_figures_go_through_the_logger_s_image_api(tmp_path, logger_cls):
    logger = logger_cls()
    _, messages = fit(tmp_path, "dict", logger, input_key="signal", label_key="target",
                      log_figures_every_n_steps=2)
    assert not [m for m in messages if "figures" in m], messages
    tags = {key.split("/step_")[0] for key, _, _ in logger.images}
    assert tags == set(FIGURE_TAGS)
    if logger_cls is WandbLike:
        assert {step for _, step, _ in logger.images} == {0, 1, 3}  # Lightning's own steps
        assert all(shape[1] >= 800 and shape[2] == 3 for _, _, shape in logger.images)


def test_a_csv_logger_gets_one_warning_naming_the_dropped_figures(tmp_path):
    _, messages = fit(tmp_path, "dict", CSVLogger(tmp_path), input_key="signal",
                      label_key="target", log_figures_every_n_steps=2)
    dropped = [m for m in messages if "are not sent to CSVLogger" in m]
    assert len(dropped) == 1, messages
    assert "figures/potential" in dropped[0] and "log_figures_every_n_steps=None" in dropped[0]
    _, messages = fit(tmp_path, "dict", CSVLogger(tmp_path), input_key="signal",
                      label_key="target")
    assert not [m for m in messages if "are not sent" in m]  # figures off: nothing dropped


def test_lightning_warns_once_when_a_probe_costs_far_more_than_a_training_step(tmp_path):
    _, messages = fit(tmp_path, "dict", CSVLogger(tmp_path), input_key="signal",
                      label_key="target", probe_size=8)
    assert not [m for m in messages if "training steps" in m]  # 8·1/8 = 1 step
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 3, generator=g)
    loader = DataLoader(Pairs("dict"), batch_size=4)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=CSVLogger(tmp_path),
                        callbacks=[CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2, top_k=2,
                                                    probe_batch=(x, x.sum(1, keepdim=True)),
                                                    probe_size=600, input_key="signal")],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Module("dict"), loader)
    cost = [str(w.message) for w in caught if "training steps" in str(w.message)]
    assert len(cost) == 1 and "≈ 150 training steps" in cost[0], cost  # 600·1/4
    assert "Fix: probe_size=200" in cost[0] and "every_n_train_steps=1500" in cost[0]
