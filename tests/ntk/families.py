"""Model families of the third zoo, built from configs (never downloaded) for the engine tests.

Optional packages (``peft``, ``diffusers``, ``transformers``) come with the ``test`` extra,
which ``make`` installs; under CI (``CI=1``) a missing one is an error, never a skip, so these
tests always run there.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch
from torch import nn


def needs(name: str) -> ModuleType:
    """The module ``name``; skipped where it is missing, except under CI."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


def tiny_gpt2(vocab: int = 40) -> nn.Module:
    transformers = needs("transformers")
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def tiny_bert(vocab: int = 40) -> nn.Module:
    transformers = needs("transformers")
    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def lora(model: nn.Module, targets: list[str]) -> nn.Module:
    """``model`` with LoRA adapters (rank 2, non-zero B so that the kernel is not trivial)."""
    peft = needs("peft")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, lora_dropout=0.0,
                             init_lora_weights=False)
    torch.manual_seed(1)
    return peft.get_peft_model(model, config)


def tiny_unet() -> nn.Module:
    diffusers = needs("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=4)
