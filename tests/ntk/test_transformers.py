"""A tiny Hugging Face GPT-2 (built from a config, no weights downloaded) against brute force.

GPT-2's ``Conv1D`` is ``torch.addmm(b, x.view(-1, d_in), W)`` with ``W`` stored (d_in, d_out),
its token embedding is tied to the output projection, and attention runs through
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from brute_force import brute_force_jacobian, brute_force_ntk
from torch import nn

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import recorder, rules

transformers = pytest.importorskip("transformers")


class LastLogits(nn.Module):
    """Logits of the first ``C`` vocabulary entries at the last position; position ids given
    batch-first (``(N, T)``) when ``batch_positions``, else left to the model (``(1, T)``)."""

    def __init__(self, batch_positions: bool, C: int = 2) -> None:
        super().__init__()
        cfg = transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=2,
                                      n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0)
        self.lm = transformers.GPT2LMHeadModel(cfg)
        self.batch_positions, self.C = batch_positions, C

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        kw = {}
        if self.batch_positions:
            kw["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        return self.lm(ids, **kw).logits[:, -1, : self.C]


def gpt2(batch_positions: bool = True) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = LastLogits(batch_positions).double().eval()
    return model, torch.randint(0, 32, (5, 6), generator=torch.Generator().manual_seed(1))


class TimeMajorConv1D(nn.Module):
    """A Conv1D fed ``x.transpose(0, 1).reshape(-1, d)``: rows time-major, not sample-major."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = transformers.pytorch_utils.Conv1D(4, 3)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, 3)
        t = x.transpose(0, 1).contiguous()
        y = torch.addmm(self.conv.bias, t.view(-1, 3), self.conv.weight).view(*t.shape[:2], 4)
        return self.head(torch.tanh(y)).transpose(0, 1).sum(1)


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian"])
@pytest.mark.parametrize("batch_positions", [True, False])
def test_gpt2_kernel_matches_bruteforce(method: str, batch_positions: bool) -> None:
    model, x = gpt2(batch_positions)
    K, R = empirical_ntk(model, x, method=method), brute_force_ntk(model, x)
    assert (K - R).abs().max() <= 1e-8 * R.abs().max()


def test_gpt2_full_output_matches_bruteforce() -> None:
    model, x = gpt2()
    K = empirical_ntk(model, x, output="full")
    R = empirical_ntk(model, x, output="full", method="jacobian")
    assert (K - R).abs().max() <= 1e-8 * R.abs().max()


def test_gpt2_parameters_take_structured_rules() -> None:
    """Conv1D (weight and bias), tied wte/lm_head, LayerNorm, and wpe with batch-first
    position ids: no parameter is left to the jacobian path."""
    model, x = gpt2()
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    seen = recorder.UseRecorder({id(t): n for n, t in leaves.items()})
    with seen:
        torch.func.functional_call(model, leaves, (x,))
    left = [n for n, us in seen.uses.items() if not rules.qualifies(us, x.shape[0])]
    assert not left, f"{left} fall back to the jacobian path"
    assert rules.tied(seen.uses["lm.transformer.wte.weight"])
    conv = seen.uses["lm.transformer.h.0.attn.c_attn.weight"]
    assert [u.rule.name for u in conv] == ["linear"] and conv[0].args["transposed"]


def test_time_major_conv1d_rows_fall_back_and_stay_exact() -> None:
    torch.manual_seed(0)
    model = TimeMajorConv1D().double()
    x = torch.randn(4, 3, 3, dtype=torch.float64)  # T = N - 1: chunk sizes cannot mistake it
    for method in ("auto", "structured"):
        K, R = empirical_ntk(model, x, method=method), brute_force_ntk(model, x)
        assert (K - R).abs().max() <= 1e-8 * R.abs().max()


def test_addmm_with_scaling_is_left_to_the_jacobian_path() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.addmm(self.b, x.view(-1, 3), self.w, beta=0.5, alpha=2.0)
            return y.view(x.shape[0], -1).sum(1)

    torch.manual_seed(0)
    model, x = Scaled().double(), torch.randn(4, 5, 3, dtype=torch.float64)
    K, R = empirical_ntk(model, x), brute_force_ntk(model, x)
    assert (K - R).abs().max() <= 1e-8 * R.abs().max()


def test_gpt2_sketch_of_many_logits_is_unbiased() -> None:
    """Model-chosen (1, T) position ids; the sketch of C = 12 logits from k = 3 combinations
    (one forward, three backward passes) averages to the exact kernel."""
    torch.manual_seed(0)
    model = LastLogits(batch_positions=False, C=12).double().eval()
    x = torch.randint(0, 32, (5, 6), generator=torch.Generator().manual_seed(1))
    R = brute_force_ntk(model, x)
    wide = empirical_ntk(model, x, method="sketch", sketch_dim=12)
    assert (wide - R).abs().max() <= 1e-8 * R.abs().max()
    S = torch.stack([empirical_ntk(model, x, method="sketch", sketch_dim=3, sketch_seed=s)
                     for s in range(20)])
    se = S.std(0) / 20**0.5
    assert ((S.mean(0) - R).abs() <= 5 * se + 1e-12 * R.abs().max()).all()


def test_conv1d_output_edited_in_place_stays_exact() -> None:
    """An in-place op on a Conv1D output (seen by the one-sample scout) gets the model a copy."""

    class Inplace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = transformers.pytorch_utils.Conv1D(4, 3)
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y.mul_(2.0).tanh_()
            return self.head(y).sum(1)

    torch.manual_seed(0)
    model, x = Inplace().double(), torch.randn(4, 5, 3, dtype=torch.float64)
    for method in ("auto", "structured", "sketch"):
        kw = {"sketch_dim": 1000} if method == "sketch" else {}
        K, R = empirical_ntk(model, x, method=method, **kw), brute_force_ntk(model, x)
        assert (K - R).abs().max() <= 1e-8 * R.abs().max()


def test_gpt2_never_needs_the_per_sample_jacobian(monkeypatch: pytest.MonkeyPatch) -> None:
    """With batch-first position ids every GPT-2 parameter passes the engine's guards (the
    rule's scout gradient equals autograd's), exact and sketched."""
    from cosmo_optim.ntk import per_sample as _ntk_exact

    calls: list[tuple] = []
    rows = _ntk_exact.PerSampleJacobian.rows
    monkeypatch.setattr(_ntk_exact.PerSampleJacobian, "rows",
                        lambda self, *a: calls.append(a) or rows(self, *a))
    model, x = gpt2()
    empirical_ntk(model, x)
    empirical_ntk(model, x, method="sketch", sketch_dim=4)
    assert not calls, f"{[c[0] for c in calls]} took the per-sample Jacobian"


@pytest.mark.parametrize("plan", ["streaming", "stored", "full"])
@pytest.mark.parametrize("select", ["last", "mean"])
def test_tied_embedding_and_lm_head_take_the_tied_gram_rule(select, plan, caplog):
    """GPT-2's ``wte`` is both the token embedding and the LM head: its kernel comes from the
    Gram terms of each use plus their cross term (never a per-sample V × d gradient), exact
    against brute force, with a token repeated across samples so the cross term is not 0."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=40, n_positions=16,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    lm = transformers.GPT2LMHeadModel(cfg).double().eval()

    class Selected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            logits = self.lm(ids).logits
            return logits[:, -1, :3] if select == "last" else logits.mean(1)[:, :4]

    model = Selected()
    ids = torch.randint(40, (5, 7), generator=torch.Generator().manual_seed(1))
    ids[0, 2] = ids[1, 5]
    kw = {"stored": {"memory_budget": 900_000}, "full": {"output": "full"}}.get(plan, {})
    with caplog.at_level(logging.INFO, logger="cosmo_optim.ntk"):
        K = empirical_ntk(model, ids, explain=True, method="structured", **kw)
    text = caplog.text
    assert "lm.transformer.wte.weight [tied" in text
    assert ("stored: chunks of" in text) == (plan != "streaming")
    J = brute_force_jacobian(model, ids)
    R = torch.einsum("icp,jdp->ijcd" if plan == "full" else "icp,jcp->ij", J, J)
    assert (K - R).abs().max() <= 1e-10 * R.abs().max()
