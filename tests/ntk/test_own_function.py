"""The kernel is of the user's own function, or a clear error: reentrant gradient checkpoints
(plain torch, a PEFT LoRA model with Hugging Face's checkpointing) and fused fast paths
(nn.TransformerEncoder with a padding mask), against the brute-force per-sample kernel."""

from __future__ import annotations

import pytest
import torch
from brute_force import assert_exact, brute_force_ntk
from families import lora, tiny_gpt2
from torch import nn
from torch.utils.checkpoint import checkpoint

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import kernel as _ntk_kernel

X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


class Checkpointed(nn.Module):
    """A block under torch.utils.checkpoint; the input of the block requires grad (as after
    Hugging Face's enable_input_require_grads), so the reentrant checkpoint records a node."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.inp, self.block, self.head = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.inp.requires_grad_(False)  # frozen, as the base model under an adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).requires_grad_(True)
        h = checkpoint(lambda t: torch.tanh(self.block(t)), h, use_reentrant=self.reentrant)
        return self.head(h)


@pytest.mark.parametrize("method", ["auto", "jacobian"])
def test_a_reentrant_checkpoint_hiding_parameters_is_refused(method: str) -> None:
    torch.manual_seed(0)
    model = Checkpointed(reentrant=True).double()
    with pytest.raises(ValueError, match=r"\['block.weight', 'block.bias'\] are inside a "
                                         r"reentrant gradient checkpoint.*use_reentrant': False"):
        empirical_ntk(model, X, method=method, verify=True)


def test_the_same_checkpoint_without_reentrancy_is_exact() -> None:
    torch.manual_seed(0)
    model = Checkpointed(reentrant=False).double()
    assert_exact(empirical_ntk(model, X, verify=True), brute_force_ntk(model, X))
    model.reentrant = True  # parameters outside the checkpoint only: nothing hidden, exact
    assert_exact(empirical_ntk(model, X, params=["head.weight", "head.bias"]),
                 brute_force_ntk(model, X, names={"head.weight", "head.bias"}))


def lora_gpt2(reentrant: bool | None) -> nn.Module:
    model = lora(tiny_gpt2(), ["c_attn"]).double()
    if reentrant is not None:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.enable_input_require_grads()
    return model.train()


LAST = lambda out: out.logits[:, -1, :3]  # noqa: E731
IDS = torch.randint(0, 40, (4, 6), generator=torch.Generator().manual_seed(0))


def test_lora_with_reentrant_checkpointing_in_training_mode_is_refused() -> None:
    model = lora_gpt2(reentrant=True)
    with pytest.raises(ValueError, match=r"lora_A.default.weight.*reentrant gradient checkpoint"):
        empirical_ntk(model, IDS, output=LAST, train_mode=True)


@pytest.mark.parametrize("reentrant", [None, False])
def test_lora_adapters_are_exact(reentrant: bool | None) -> None:
    """The fixes the refusal names: no checkpointing, or checkpointing without reentrancy."""
    model = lora_gpt2(reentrant)
    K = empirical_ntk(model, {"input_ids": IDS}, output=LAST, train_mode=True, verify=True)
    assert_exact(K, brute_force_ntk(model, {"input_ids": IDS}, LAST, train=True))


class Encoder(nn.Module):
    """A frozen nn.TransformerEncoder in eval with a padding mask, under a trainable head."""

    def __init__(self, nested: bool = True, masked_pool: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)
        self.enc.requires_grad_(False)
        self.head, self.masked_pool = nn.Linear(8, 2), masked_pool

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.enc(x, src_key_padding_mask=mask)
        if self.masked_pool:
            keep = (~mask)[..., None].to(h.dtype)
            return self.head((h * keep).sum(1) / keep.sum(1))
        return self.head(h.mean(1))


def padded_batch() -> dict[str, torch.Tensor]:
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[:, 4:] = True
    mask[0, 2:] = True
    return {"x": torch.randn(5, 6, 8, generator=torch.Generator().manual_seed(1)), "mask": mask}


def test_a_fused_fast_path_computing_another_function_is_refused() -> None:
    model, b = Encoder().eval(), padded_batch()
    with pytest.raises(ValueError, match=r"modules \['enc'\] take PyTorch's fused fast path.*"
                                         r"zeroes the outputs at padded positions"):
        empirical_ntk(model, b)


def test_verify_alone_catches_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify runs the user's forward as it is, fast path included: it shares nothing."""
    monkeypatch.setattr(_ntk_kernel, "same_function", lambda *args: None)
    with pytest.raises(RuntimeError, match=r"self-check failed"):
        empirical_ntk(Encoder().eval(), padded_batch(), verify=True)


@pytest.mark.parametrize("fix", ["masked_pool", "no_nested_tensor", "fastpath_off"])
def test_the_fixes_the_refusal_names_give_exact_kernels(fix: str) -> None:
    model = Encoder(nested=fix != "no_nested_tensor", masked_pool=fix == "masked_pool").eval()
    b = padded_batch()
    flag = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fix != "fastpath_off")
    try:
        K, R = empirical_ntk(model, b, verify=True), brute_force_ntk(model, b)
    finally:
        torch.backends.mha.set_fastpath_enabled(flag)
    assert_exact(K, R, 1e-5)  # float32; the fused kernels round differently
