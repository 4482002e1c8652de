"""A real TensorBoard server on the logs of a tiny Lightning run and a tiny Hugging Face run:
every custom-scalars chart matches at least one logged scalar tag, the histograms and figures
sit beside the scalars (HF writes them all under ``train/``), and the dashboard explains
itself: charts of one scale, descriptions with units, a verdicts card (issue #21 item 7)."""

from __future__ import annotations

import importlib
import json
import os
import re
import time
import urllib.parse
import urllib.request
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("tensorboard")
from tensorboard import program

from cosmo_optim import CosmoSGD


def _framework(name: str):
    """The framework's module; skipped where it is not installed, except in CI, which
    installs every extra (there a missing framework fails the test)."""
    return importlib.import_module(name) if os.environ.get("CI") else pytest.importorskip(name)


def _lightning_run(log_dir, regression_module):
    L = _framework("lightning.pytorch")
    from lightning.pytorch.loggers import TensorBoardLogger

    from cosmo_optim.callbacks import CosmologyMonitor

    def configure(self):
        return CosmoSGD(self.parameters(), vacuum_energy=3.0, time_step=0.1)

    L.seed_everything(0)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_steps=6, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        logger=TensorBoardLogger(log_dir, name="lightning", version=0),
                        callbacks=[CosmologyMonitor(nn.MSELoss(), every_n_train_steps=3, top_k=2,
                                                    log_figures_every_n_steps=3)])
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=8)
    trainer.fit(regression_module(configure), data)


def _huggingface_run(tmp_path, monkeypatch, log_dir, adamw):
    transformers = _framework("transformers")
    _framework("accelerate")
    from cosmo_optim.callbacks import CosmologyCallback

    config = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16, num_labels=3,
                                     max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)  # from a config: no download
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 32, (16, 6), generator=g), torch.randint(0, 3, (16,), generator=g)
    rows = [{"input_ids": i, "attention_mask": torch.ones(6, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels, strict=True)]
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(log_dir / "huggingface"))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=6, logging_steps=3, report_to=["tensorboard"],
        per_device_train_batch_size=8, use_cpu=True, save_strategy="no", disable_tqdm=True,
        seed=0)
    opt = None if adamw else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   optimizers=(opt, None))
    trainer.add_callback(CosmologyCallback(top_k=2, probe_size=4, log_figures_every_n_steps=3,
                                           trainer=trainer))  # the model's own loss
    trainer.train()


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _serve(log_dir) -> str:
    """The URL of a TensorBoard server on `log_dir`, bound to a free port it picks."""
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", "0",
                          "--load_fast=false", "--reload_interval=1"])
    return board.launch().rstrip("/")


def _loaded(url: str, runs: set[str]) -> dict:
    """The scalar tags per run, once the server has read every run (it loads in a thread)."""
    deadline = time.monotonic() + 120
    tags: dict = {}
    while time.monotonic() < deadline and not runs <= {
            r for r, t in tags.items() if any("ntk/lambda_1" in k for k in t)}:
        time.sleep(0.5)
        tags = _get(f"{url}/data/plugin/scalars/tags")
    return tags


def charts(layout: dict) -> list[tuple[str, list[str]]]:
    """(title, regexes) of every multiline chart in a custom-scalars layout response."""
    return [(chart["title"], chart["multiline"]["tag"])
            for category in layout.get("category", []) for chart in category["chart"]]


@pytest.mark.parametrize("framework", ["lightning", "huggingface", "huggingface-adamw"])
def test_every_dashboard_chart_is_filled_and_holds_one_quantity(framework, tmp_path,
                                                                monkeypatch, request):
    """One server per run: TensorBoard merges the layouts of all runs it serves."""
    log_dir = tmp_path / "logs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if framework == "lightning":
            _lightning_run(log_dir, request.getfixturevalue("regression_module"))
        else:
            _huggingface_run(tmp_path, monkeypatch, log_dir, framework.endswith("adamw"))
    url = _serve(log_dir / framework.split("-")[0])
    runs = set(_get(f"{url}/data/runs"))
    tags = _loaded(url, runs)
    assert len(runs) == 1, runs
    run = runs.pop()
    scalars = set(tags[run])
    found = charts(_get(f"{url}/data/plugin/custom_scalars/layout"))
    empty = [title for title, regexes in found
             if not any(re.search(rx, t) for rx in regexes for t in scalars)]
    assert not empty, f"charts matching no tag: {empty}; tags {sorted(scalars)}"
    for title, regexes in found:  # one quantity per chart (a per-mode one: one per mode)
        matched = {re.sub(r"_\d+$", "", t.removeprefix("train/")) for t in scalars
                   if any(re.search(rx, t) for rx in regexes)}
        assert len(matched) == 1, (title, matched)
    prefix = "train/" if framework.startswith("huggingface") else ""
    dual = framework != "huggingface-adamw"
    assert (prefix + "cosmology/hubble_rate" in scalars) == dual
    assert (len(found) >= 18) if dual else (8 <= len(found) <= 11), [t for t, _ in found]
    if prefix:  # one TensorBoard run: the Trainer's own scalars beside ours
        assert "train/loss" in scalars
        assert (prefix + "cosmology/omega_phi" in scalars) == dual  # the model's own loss
    histograms = set(_get(f"{url}/data/plugin/histograms/tags").get(run, {}))
    assert prefix + "ntk/spectrum" in histograms, histograms
    images = set(_get(f"{url}/data/plugin/images/tags").get(run, {}))
    assert prefix + "figures/spectrum" in images, images
    explains_itself(url, run, prefix, found, tags[run], dual)
    print(f"{framework}: {len(found)} charts, every one filled")


def explains_itself(url: str, run: str, prefix: str, found, tags: dict, dual: bool) -> None:
    """The decisive quantities are charted (H, Λ, Ω_φ and the relative residual as log10
    views); every monitor tag has a description with units; the verdicts card says whether the
    latest reading follows its dual, with the relative residual."""
    charted = {t for _, regexes in found for t in tags if any(re.search(rx, t) for rx in regexes)}
    assert prefix + "duality/log10_relative_residual" in charted
    if dual:
        assert {prefix + "cosmology/" + t for t in ("log10_hubble_rate", "log10_vacuum_energy",
                                                      "efolds", "log10_omega_phi")} <= charted
    ours = [t for t in tags if re.search(r"(cosmology|ntk|modes|duality)/", t)]
    bare = [t for t in ours if not tags[t].get("description")]
    assert not bare, f"tags without a description: {bare}"
    if dual:
        assert "per unit of time" in tags[prefix + "cosmology/hubble_rate"]["description"]
        assert "dimensionless" in tags[prefix + "cosmology/omega_phi"]["description"]
    texts = _get(f"{url}/data/plugin/text/tags").get(run, [])
    card_tag = prefix + "cosmology/verdicts/text_summary"  # torch's add_text suffix
    assert card_tag in texts, texts
    query = urllib.parse.urlencode({"run": run, "tag": card_tag})
    card = _get(f"{url}/data/plugin/text/text?{query}")[-1]["text"]
    assert "relative residual" in card and "The dual" in card, card
