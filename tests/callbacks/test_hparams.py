"""With Lightning's save_hyperparameters() the physics hyperparameters still reach TensorBoard's
HPARAMS table next to the module's (read from a real server's hparams plugin), and hp_metric
is logged once."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("tensorboard")
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from tensorboard import program  # noqa: E402

from cosmo_optim.callbacks import CosmologyMonitor  # noqa: E402


class Saving(L.LightningModule):
    def __init__(self, width: int = 8, label: str = "tiny"):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_physics_hparams_sit_next_to_the_module_s_and_hp_metric_is_logged_once(tmp_path):
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_steps=4, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        logger=TensorBoardLogger(tmp_path, name="", version=0),
                        callbacks=[CosmologyMonitor(nn.MSELoss(), every_n_train_steps=2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Saving(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(tmp_path), "--host", "127.0.0.1", "--port", "0",
                          "--load_fast=false", "--reload_interval=1"])
    url = board.launch().rstrip("/")
    deadline, names = time.monotonic() + 120, set()
    while time.monotonic() < deadline and "cosmology/hubble_rate" not in names:
        time.sleep(0.5)
        experiment = _post(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment.get("hparamInfos", [])}
    assert {"width", "label"} <= names
    assert {"cosmology/lr", "cosmology/hubble_rate", "cosmo_optim/top_k"} <= names, names
    groups = _post(f"{url}/data/plugin/hparams/session_groups",
                   {"experimentName": "", "startIndex": 0, "sliceSize": 10,
                    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                        "STATUS_RUNNING"],
                    "colParams": [{"hparam": "cosmology/lr"}, {"hparam": "width"}]})
    values = groups["sessionGroups"][0]["hparams"]
    assert values["cosmology/lr"] == pytest.approx(0.05) and values["width"] == 8
    points = _get(f"{url}/data/plugin/scalars/scalars?" + urllib.parse.urlencode(
        {"run": "version_0", "tag": "hp_metric"}))
    assert len(points) == 1, points
