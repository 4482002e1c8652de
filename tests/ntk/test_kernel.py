"""empirical_ntk against the independent brute-force reference (brute_force.py): J row by row."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch
from brute_force import assert_exact, brute_force_jacobian, brute_force_ntk
from torch import nn

from cosmo_optim import empirical_ntk

METHODS = ["auto", "structured", "jacobian"]


class Erf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


def mlp(act: Callable[[], nn.Module], d_in: int = 3, width: int = 16, d_out: int = 1) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, width), act(), nn.Linear(width, width), act(),
                         nn.Linear(width, d_out))


class TinyLM(nn.Module):
    """Embedding + LayerNorm + TransformerEncoderLayer; optionally tied output projection."""

    def __init__(self, vocab: int = 13, d: int = 8, tied: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.ln = nn.LayerNorm(d)
        self.enc = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.1, batch_first=True)
        self.out = nn.Linear(d, vocab, bias=False)
        if tied:
            self.out.weight = self.emb.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.out(self.enc(self.ln(self.emb(t)))).mean(1)[:, :3]


class Twice(nn.Module):
    """One block applied twice, plus a layer that sees the batch on dim 1 (sequence first)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.block, self.seqfirst = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, S, 3)
        h = torch.tanh(self.block(torch.tanh(self.block(self.inp(x)))))
        h = self.seqfirst(h.transpose(0, 1)).transpose(0, 1)
        return self.head(h).sum(1)


def cnn() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, bias=False), nn.Tanh(), nn.AvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 2),
    )
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def conv1d_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding=2, dilation=2), nn.GELU(), nn.Flatten(),
                         nn.Linear(3 * 7, 1))


class ConvZoo(nn.Module):
    """Convs with groups, "same" padding (even kernel: asymmetric), stride with dilation."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding="same", dilation=2)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.c3 = nn.Conv2d(6, 3, (2, 3), stride=(1, 2), dilation=(2, 1), padding=(1, 0))
        self.d1 = nn.Conv1d(2, 4, 4, padding="same", groups=2)
        self.head = nn.Linear(3 * 4 * 1 + 4 * 7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 2, 7, 7)
        h = self.c3(torch.tanh(self.c2(torch.tanh(self.c1(x)))))
        s = torch.tanh(self.d1(x[:, :, 3]))
        return self.head(torch.cat([h.flatten(1), s.flatten(1)], 1))


class Attention(nn.Module):
    """Self-attention with masks, attention weights and a 2-d LayerNorm (structured rules)."""

    def __init__(self, mode: str, d: int = 8, S: int = 5) -> None:
        super().__init__()
        self.mode = mode
        self.inp = nn.Linear(3, d)
        self.enc = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True,
                                              norm_first=mode == "causal")
        self.mha = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln = nn.LayerNorm((S, d))
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, S, 3)
        h = self.inp(x)
        S = h.shape[1]
        pad = x[:, :, 0] > 1.0  # data-dependent key padding (never a whole row here)
        pad[:, 0] = False
        if self.mode == "padding":
            h = self.enc(h, src_key_padding_mask=pad)
        elif self.mode == "causal":
            mask = nn.Transformer.generate_square_subsequent_mask(S, dtype=h.dtype)
            h = self.enc(h, src_mask=mask, is_causal=True)
        else:
            h = self.enc(h)
        a, w = self.mha(h, h, h, key_padding_mask=pad if self.mode != "plain" else None,
                        need_weights=True, average_attn_weights=self.mode == "plain")
        h = self.ln(h + a) * (1 + w.reshape(h.shape[0], -1)[:, :1, None])
        return self.head(h).mean(1)


class SeqFirstAttention(nn.Module):
    """``nn.MultiheadAttention`` with batch_first=False: samples on dim 1 inside."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.inp, self.mha, self.head = nn.Linear(3, d), nn.MultiheadAttention(d, 3), nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, S, 3)
        h = self.inp(x).transpose(0, 1)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.head(torch.tanh(a)).sum(0)


CASES = {
    "tanh": (lambda: mlp(nn.Tanh), lambda g: torch.randn(6, 3, generator=g)),
    "relu": (lambda: mlp(nn.ReLU, d_out=2), lambda g: torch.randn(6, 3, generator=g)),
    "erf": (lambda: mlp(Erf), lambda g: torch.randn(5, 3, generator=g)),
    "gelu": (lambda: mlp(nn.GELU, d_out=3), lambda g: torch.randn(7, 3, generator=g)),
    "cnn": (cnn, lambda g: torch.randn(5, 1, 6, 6, generator=g)),
    "conv1d": (conv1d_net, lambda g: torch.randn(5, 2, 7, generator=g)),
    "transformer": (TinyLM, lambda g: torch.randint(0, 13, (6, 5), generator=g)),
    "tied": (lambda: TinyLM(tied=True), lambda g: torch.randint(0, 13, (6, 5), generator=g)),
    "twice": (Twice, lambda g: torch.randn(5, 4, 3, generator=g)),
    "convzoo": (ConvZoo, lambda g: torch.randn(5, 2, 7, 7, generator=g)),
    "attention": (lambda: Attention("plain"), lambda g: torch.randn(5, 5, 3, generator=g)),
    "attention_padding": (lambda: Attention("padding"),
                          lambda g: torch.randn(5, 5, 3, generator=g)),
    "attention_causal": (lambda: Attention("causal"),
                         lambda g: torch.randn(5, 5, 3, generator=g)),
    "attention_seqfirst": (SeqFirstAttention, lambda g: torch.randn(5, 4, 3, generator=g)),
}


def build(case: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    make_model, make_x = CASES[case]
    model = make_model().to(dtype)
    x = make_x(torch.Generator().manual_seed(1))
    return model, x.to(dtype) if x.is_floating_point() else x


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_bruteforce_float64(case: str, method: str) -> None:
    model, x = build(case, torch.float64)
    assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x), 1e-8)


@pytest.mark.parametrize("case", ["relu", "cnn", "transformer"])
def test_kernel_matches_bruteforce_float32(case: str) -> None:
    model, x = build(case, torch.float32)
    K = empirical_ntk(model, x)
    assert K.dtype == torch.float32
    assert_exact(K, brute_force_ntk(copy.deepcopy(model).double(), _f64(x)), 1e-4)


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.is_floating_point() else x


def test_dtype_float64_computes_in_float64_without_changing_the_model() -> None:
    model, x = build("gelu", torch.float32)
    K = empirical_ntk(model, x, dtype=torch.float64)
    assert K.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_exact(K, brute_force_ntk(copy.deepcopy(model).double(), x.double()), 1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_full_output_blocks_and_trace_is_sum_of_diagonal_blocks(method: str) -> None:
    model, x = build("gelu", torch.float64)
    full = empirical_ntk(model, x, output="full", method=method)
    J = brute_force_jacobian(model, x)
    assert full.shape == (7, 7, 3, 3)
    assert_exact(full, torch.einsum("icp,jdp->ijcd", J, J), 1e-8)
    trace = empirical_ntk(model, x, output="trace", method=method)
    assert_exact(trace, full.diagonal(dim1=2, dim2=3).sum(-1), 1e-12)


@pytest.mark.parametrize("case", ["gelu", "cnn", "transformer"])
def test_int_and_callable_outputs(case: str) -> None:
    model, x = build(case, torch.float64)
    J = brute_force_jacobian(model, x)
    K1 = empirical_ntk(model, x, output=1)
    assert_exact(K1, J[:, 1] @ J[:, 1].T, 1e-8)
    Km = empirical_ntk(model, x, output=-1)
    assert_exact(Km, J[:, -1] @ J[:, -1].T, 1e-8)
    Kc = empirical_ntk(model, x, output=lambda out: out.sum(-1))
    assert_exact(Kc, J.sum(1) @ J.sum(1).T, 1e-8)


def test_parameter_subset_by_names_and_predicate() -> None:
    model, x = build("cnn", torch.float64)
    names = ["0.weight", "8.bias"]
    R = brute_force_ntk(model, x, names=names)
    assert_exact(empirical_ntk(model, x, params=names), R, 1e-8)
    assert_exact(empirical_ntk(model, x, params=lambda n, p: n in names), R, 1e-8)


def test_frozen_parameters_never_count() -> None:
    model, x = build("transformer", torch.float64)
    model.emb.weight.requires_grad_(False)
    model.enc.linear1.requires_grad_(False)
    R = brute_force_ntk(model, x)
    assert_exact(empirical_ntk(model, x), R, 1e-8)
    assert_exact(empirical_ntk(model, x, params=["emb.weight", "out.weight"]),
                 brute_force_ntk(model, x, names=["out.weight"]), 1e-8)


def test_exact_under_tiny_memory_budget_with_chunking() -> None:
    model, x = build("transformer", torch.float64)
    R = brute_force_ntk(model, x)
    for method in METHODS:
        assert_exact(empirical_ntk(model, x, method=method, memory_budget=300_000), R, 1e-8)


def test_memory_budget_too_small_raises_before_allocating() -> None:
    model, x = build("tanh", torch.float64)
    with pytest.raises(ValueError, match=r"Invalid memory_budget: 1000 bytes; .* needs at least"):
        empirical_ntk(model, x, memory_budget=1000)
    with pytest.raises(ValueError, match=r"Invalid memory_budget: -1"):
        empirical_ntk(model, x, memory_budget=-1)


def test_model_without_batching_rule_uses_the_loop() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.ln = nn.Linear(3, 4), nn.LayerNorm(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln(self.lin(x))
            return h * 2 if float(h.abs().max()) > 100 else h  # no vmap rule for .item()

    torch.manual_seed(0)
    model, x = DataDependent().double(), torch.randn(4, 3, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x), 1e-8)


def test_batchnorm_and_dropout_in_train_mode_are_refused() -> None:
    model, x = build("cnn", torch.float64)
    with pytest.raises(ValueError, match=r"Invalid train_mode: True with BatchNorm module '1'"):
        empirical_ntk(model, x, train_mode=True)
    lm, t = build("transformer", torch.float64)
    with pytest.raises(ValueError, match=r"Invalid train_mode: True with Dropout module"):
        empirical_ntk(lm, t, train_mode=True)


def test_train_mode_kernel_for_deterministic_model() -> None:
    model, x = build("tanh", torch.float64)
    assert_exact(empirical_ntk(model, x, train_mode=True), brute_force_ntk(model, x), 1e-8)


def test_no_side_effects_on_grad_mode_and_rng() -> None:
    model, x = build("transformer", torch.float64)
    model.train()
    model.ln.eval()  # mixed per-module flags must be restored exactly
    model.out.weight.grad = torch.ones_like(model.out.weight)
    flags = [m.training for m in model.modules()]
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    empirical_ntk(model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model.out.weight.grad, torch.ones_like(model.out.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "out.weight")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_kernel_is_symmetric_psd_and_on_input_device() -> None:
    model, x = build("relu", torch.float64)
    K = empirical_ntk(model, x)
    assert K.device == x.device
    assert not K.requires_grad
    assert torch.allclose(K, K.T)
    assert torch.linalg.eigvalsh(K).min() > -1e-10 * K.abs().max()


def test_linear_model_kernel_is_closed_form() -> None:
    # f(x) = w·x + b: Θ(x, x') = x·x' + 1 exactly (T4), independent of the weights.
    model = nn.Linear(4, 1).double()
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert_exact(empirical_ntk(model, x), x @ x.T + 1, 1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "fast"}, r'Invalid method "fast". Must be one of \[\'auto\''),
        ({"output": "diag"}, r"Invalid output: 'diag'; it must be 'trace', 'full'"),
        ({"output": 7}, r"Invalid output: 7; the model has 3 output components"),
        ({"output": lambda o: o.sum()}, r"Invalid output: the selected output has shape \(\) for 1 samples"),
        ({"output": lambda o: o.T}, r"Invalid output: the selected output has shape \(3, 1\) for 1 samples"),
        ({"memory_budget": "lots"}, r"Invalid memory_budget: 'lots'; it must be a positive number of bytes"),
        ({"memory_budget": float("nan")}, r"Invalid memory_budget: nan"),
        ({"memory_budget": 0}, r"Invalid memory_budget: 0"),
        ({"memory_budget": -5.0}, r"Invalid memory_budget: -5.0"),
        ({"memory_budget": True}, r"Invalid memory_budget: True"),
        ({"verify": 1}, r"Invalid verify: 1; it must be an integer ≥ 2"),
        ({"params": ["nope"]}, r"Invalid params: \['nope'\]; names \['nope'\] are not"),
        ({"params": lambda n, p: False}, r"Invalid params: .*; it selects no trainable"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs: dict, match: str) -> None:
    model, x = build("gelu", torch.float64)
    with pytest.raises(ValueError, match=match):
        empirical_ntk(model, x, **kwargs)


def test_single_sample_and_two_samples() -> None:
    model, x = build("twice", torch.float64)
    for n in (1, 2):
        assert_exact(empirical_ntk(model, x[:n]), brute_force_ntk(model, x[:n]), 1e-8)
    assert math.isfinite(float(empirical_ntk(model, x[:1])))


def test_attention_layer_norm_and_grouped_conv_take_the_structured_rules() -> None:
    from cosmo_optim.ntk import recorder, rules

    for case in ("attention", "attention_padding", "attention_causal", "attention_seqfirst",
                 "convzoo"):
        model, x = build(case, torch.float64)
        leaves = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        seen = recorder.UseRecorder({id(t): n for n, t in leaves.items()})
        with seen:
            torch.func.functional_call(model.eval(), leaves, (x,))
        unknown = [n for n, us in seen.uses.items() if any(u.rule is None for u in us)]
        assert not unknown, f"{case}: {unknown} fall back to the jacobian path"
        seqfirst_head = case == "attention_seqfirst"  # its head sees (S, N, d): not batch-first
        assert all(rules.qualifies(us, x.shape[0]) for n, us in seen.uses.items()
                   if not (seqfirst_head and n.startswith("head")))


def test_symmetric_blocked_gram_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from cosmo_optim.ntk import forms

    monkeypatch.setattr(forms, "_SYMMETRIC_FROM", 2)
    for case in ("tanh", "transformer", "twice"):
        model, x = build(case, torch.float64)
        for method in ("structured", "auto"):
            assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x), 1e-8)


def test_symmetric_blocked_accumulate_equals_full_product() -> None:
    from cosmo_optim.ntk import per_sample as _ntk_exact

    g = torch.Generator().manual_seed(3)
    for N in (130, 300, 700):
        G = torch.randn(N, 1, 17, dtype=torch.float64, generator=g)
        K = torch.ones(N, N, dtype=torch.float64)
        _ntk_exact.accumulate(K, G, full=False)
        assert_exact(K, 1 + G[:, 0] @ G[:, 0].T, 1e-14)


def test_first_call_loads_no_compiler_stack() -> None:
    """Cold start: an eager model's first call must not import torch._dynamo (~800 modules,
    about a second of CPU); a compiled model has loaded it already and runs eagerly."""
    code = textwrap.dedent("""
        import sys, torch
        from torch import nn
        from cosmo_optim import empirical_ntk
        net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        empirical_ntk(net, torch.randn(4, 3), output="full")
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False"
