"""``loss="model"`` (issue #32 item 2): the model's own loss, found on the probe batch, for tiny
Hugging Face models built from configs (no download), against each model's own loss computed
sample by sample (an independent reference for the per-sample form)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cosmo_optim.monitor import CosmologyTracker, MonitorConfig
from cosmo_optim.monitor.model_loss import logits_of, own_loss
from cosmo_optim.monitor.reading import own_loss_of
from cosmo_optim.ntk import ModelInputs

transformers = pytest.importorskip("transformers")


def _bert(**config):
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, **config)).eval()


def _found(model, inputs, labels):
    with torch.no_grad():
        return own_loss(model, ModelInputs(inputs), labels, "labels", logits_of)


@pytest.mark.parametrize(("config", "labels", "name"), [
    ({"num_labels": 3}, torch.tensor([0, 2, 1, 1]), "cross-entropy over the classes"),
    ({"num_labels": 1}, torch.tensor([0.5, -1.0, 2.0, 0.0]), "mean squared error"),
    ({"num_labels": 3, "problem_type": "multi_label_classification"},
     torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]]), "binary cross-entropy"),
])
def test_a_sequence_classifier_s_loss_is_named_by_its_problem_type(config, labels, name):
    model = _bert(**config)
    ids = torch.randint(0, 32, (4, 6), generator=torch.Generator().manual_seed(1))
    loss, what = _found(model, {"input_ids": ids}, labels)
    assert loss is not None and what.startswith(name), what
    with torch.no_grad():
        per_sample = [float(model(input_ids=ids[i : i + 1], labels=labels[i : i + 1]).loss)
                      for i in range(4)]
        f = model(input_ids=ids).logits.double()
    assert loss.per_sample(f, labels).tolist() == pytest.approx(per_sample, rel=1e-5)


def test_a_causal_language_model_s_loss_is_the_next_token_s_over_its_unpadded_tokens():
    """GPT-2 with labels −100 on padding: each sample's ℓ_i, scaled so that their mean is the
    batch's token mean, equals the model's loss on that sample alone times its share of the
    batch's counted tokens."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=11, n_positions=8)).eval()
    ids = torch.randint(1, 11, (4, 6), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, 4:] = labels[2, 3:] = -100  # padded tails
    loss, what = _found(model, {"input_ids": ids}, labels)
    assert loss is not None and "next token" in what, what
    counted = (labels[:, 1:] != -100).sum(1)
    with torch.no_grad():
        alone = torch.tensor([float(model(input_ids=ids[i : i + 1], labels=labels[i : i + 1]).loss)
                              for i in range(4)], dtype=torch.float64)
        f = model(input_ids=ids).logits.double()
    reference = alone * counted * 4 / counted.sum()
    assert loss.per_sample(f, labels).tolist() == pytest.approx(reference.tolist(), rel=1e-5)


def test_without_a_loss_or_a_match_the_reason_is_given():
    net = nn.Linear(3, 2)
    loss, why = _found(lambda x, labels: net(x), (torch.randn(4, 3),), torch.zeros(4))
    assert loss is None and "returns no loss" in why
    model = _bert(num_labels=3)  # its loss, then outputs it was not computed on
    ids = torch.randint(0, 32, (4, 6))
    with torch.no_grad():
        loss, why = own_loss(model, ModelInputs({"input_ids": ids}), torch.tensor([0, 1, 2, 0]),
                             "labels", lambda out: out.logits[:, :2])
    assert loss is None and "matches none of" in why


def test_a_tracker_with_loss_model_reads_the_dual_and_says_which_loss(caplog):
    model = _bert(num_labels=3)
    g = torch.Generator().manual_seed(3)
    batch = {"input_ids": torch.randint(0, 32, (6, 5), generator=g),
             "labels": torch.randint(0, 3, (6,), generator=g)}
    tracker = CosmologyTracker(model, "model", probe_batch=(
        ModelInputs({"input_ids": batch["input_ids"]}), batch["labels"]), top_k=2,
        every_n_steps=2, output=logits_of, label_key="labels")
    tracker.observe(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    with caplog.at_level("INFO", logger="cosmo_optim.monitor.console"):
        scalars = tracker.read(0)
    assert "cosmology/omega_phi" in scalars  # the dual's tags, with the model's loss
    assert "the model's own loss, cross-entropy over the classes" in caplog.text
    config = MonitorConfig(every_n_steps=2, label_key="labels", output=logits_of)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found, _ = own_loss_of(model, {"input_ids": batch["input_ids"]}, batch["labels"], config)
    assert found is not None
