"""The engine's run-time checks each catch what they are for: break the rule or hide the check,
and the kernel must still be exact (another check catches it) or the self-check must raise."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from brute_force import assert_exact, brute_force_ntk
from test_zoo import seeded
from torch import nn

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import guards as _ntk_guards
from cosmo_optim.ntk import per_sample as _ntk_exact
from cosmo_optim.ntk import recorder as _ntk_recorder
from cosmo_optim.ntk import rules as _ntk_rules


def prelu_net() -> nn.Module:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 3), nn.PReLU(3), nn.Linear(3, 3)))
    with torch.no_grad():
        model[1].weight.uniform_(-0.5, 0.5)
    return model


def test_vmap_spot_check_catches_a_wrong_batching_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the deny-list, prelu's batching rule is wrong at n = C; the spot check of the
    first sample of each chunk size against the one-sample loop must switch to the loop."""
    monkeypatch.setattr(_ntk_exact, "VMAP_UNSAFE", frozenset())
    model, x = prelu_net(), torch.randn(3, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x, method="jacobian"), brute_force_ntk(model, x))


def test_missing_cotangent_demotes_instead_of_counting_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled module traced by dynamo hands the recorder outputs outside the real graph;
    with the eager stance switched off, the missing-cotangent check alone keeps it exact."""
    monkeypatch.setattr(torch.compiler, "set_stance", lambda *a, **k: contextlib.nullcontext())
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    x = torch.randn(6, 4, dtype=torch.float64)
    R = brute_force_ntk(model, x)
    torch._dynamo.reset()
    assert_exact(empirical_ntk(torch.compile(model, backend="eager"), x), R)


def test_version_check_alone_catches_an_overwritten_output(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the protective copies, ReLU(inplace=True) overwrites the captured outputs; the
    version-counter check must then send those parameters to the exact path."""
    monkeypatch.setattr(_ntk_recorder.UseRecorder, "overwritten", lambda self: frozenset())
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(inplace=True),
                                         nn.Linear(16, 3)))
    x = torch.randn(7, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x, method="structured"), brute_force_ntk(model, x))


def test_outputs_are_copied_only_where_the_model_writes_in_place() -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(inplace=True),
                                         nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)))
    leaves = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    recorder = _ntk_recorder.UseRecorder({id(t): n for n, t in leaves.items()})
    with recorder:
        torch.func.functional_call(model, leaves, (torch.randn(2, 4, dtype=torch.float64),))
    assert recorder.overwritten() == {0}  # only the first layer's output feeds ReLU(inplace)


def _wrong_linear_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linear rule off by 1 % in both forms (per-sample gradients and Gram rows)."""
    rule = type(_ntk_rules.RULES[nn.functional.linear])
    psg, rows = rule.per_sample_grad, rule.rows
    monkeypatch.setattr(rule, "per_sample_grad", lambda self, u, d: 1.01 * psg(self, u, d))
    monkeypatch.setattr(rule, "rows", lambda self, u, d: (rows(self, u, d)[0],
                                                          1.01 * rows(self, u, d)[1]))


def test_hidden_route_guard_alone_catches_a_wrong_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule whose gradient differs from autograd's on the one-sample scout is not used."""
    _wrong_linear_rule(monkeypatch)
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    x = torch.randn(6, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x))


def test_verify_passes_on_exact_kernels_and_returns_the_same_kernel() -> None:
    model, x = prelu_net(), torch.randn(9, 4, dtype=torch.float64)
    for output in ("trace", "full", 1):
        K = empirical_ntk(model, x, output=output)
        assert torch.equal(empirical_ntk(model, x, output=output, verify=True), K)
    model32 = seeded(lambda: nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 2))).float()
    empirical_ntk(model32, torch.randn(20, 4), verify=5)
    empirical_ntk(model32, torch.randn(20, 4), dtype=torch.float64, verify=True)


def test_verify_raises_with_the_measured_error_when_a_rule_is_wrong(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _wrong_linear_rule(monkeypatch)
    monkeypatch.setattr(_ntk_guards, "hidden_route", lambda *a: set())  # the guard that would
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    x = torch.randn(6, 4, dtype=torch.float64)
    empirical_ntk(model, x)  # silently wrong without the check ...
    with pytest.raises(RuntimeError, match=r"self-check failed: .* by [0-9.e-]+ \(relative; "
                                           r"tolerance 1e-08 for torch.float64\)"):
        empirical_ntk(model, x, verify=True)  # ... caught with it


def test_verify_leaves_grads_buffers_modes_and_rng_alone() -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3),
                                         nn.Linear(8, 2)))
    model.train()
    x = torch.randn(6, 4, dtype=torch.float64)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    state = torch.get_rng_state()
    empirical_ntk(model, x, verify=True)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(b, s) for b, s in zip(model.buffers(), buffers, strict=True))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("text", "expected"), [
    ("1GB", 10**9), ("512MiB", 512 * 2**20), ("1.5 kib", 1536), ("2e3", 2000), (" 7 b ", 7),
])
def test_memory_budget_strings_are_bytes(text: str, expected: int) -> None:
    from cosmo_optim._common import parse_bytes
    assert parse_bytes("memory_budget", text) == expected


# ------------------------------------------------------------------------- memory budgets
_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from torch import nn
    from cosmo_optim import empirical_ntk
    torch.set_num_threads(1)
    case, budget = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    if case == "prelu":      # the exact per-sample path (vmap refused: prelu)
        model = nn.Sequential(nn.Linear(64, 512), nn.PReLU(512), nn.Linear(512, 512),
                              nn.PReLU(512), nn.Linear(512, 1))
        x, kwargs = torch.randn(512, 64), {}
    elif case == "jacobian":  # vmap(jacrev) over every parameter, chunked
        model = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
                              nn.Linear(512, 1))
        x, kwargs = torch.randn(256, 64), {"method": "jacobian"}
    elif case == "psg":       # structured, per-sample-gradient form
        model = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
                              nn.Linear(512, 4))
        x, kwargs = torch.randn(512, 64), {}
    else:                     # structured, Gram form (sequences of 64 rows, mean-pooled)
        model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 1), nn.Flatten(),
                              nn.AdaptiveAvgPool1d(1))
        x, kwargs = torch.randn(256, 64, 16), {"method": "structured"}
    empirical_ntk(model, x[:2], **kwargs)  # warm-up: first-use machinery is not the engine's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    K = empirical_ntk(model, x, memory_budget=budget, **kwargs)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rise": after - before, "finite": bool(torch.isfinite(K).all())}))
""")
_BUDGET = 64 * 2**20
_SLACK = 16 * 2**20  # autograd bookkeeping, thread-pool scratch and the model's own forward


@pytest.mark.slow
@pytest.mark.parametrize("case", ["prelu", "jacobian", "psg", "gram"])
def test_every_path_stays_within_the_memory_budget(case: str) -> None:
    """Peak RSS of a fresh process rises by at most budget + 16 MiB, on requests whose
    unchunked buffers would be 2-5× the budget (e.g. J of 0.3M parameters × 256 samples).

    glibc's dynamic mmap threshold keeps freed multi-MB blocks in the heap, which can raise
    RSS by up to one more budget with the default allocator (docs/performance.md); the
    threshold is fixed here so that RSS measures what the engine holds.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, case, str(_BUDGET)],
                         capture_output=True, text=True, check=True, timeout=600, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["rise"] <= _BUDGET + _SLACK, f"{case}: peak RSS rose {result['rise'] / 2**20:.0f} MiB"
