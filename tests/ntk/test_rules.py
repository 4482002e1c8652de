"""Each layer rule, and each term form built on it, against torch.func (BackPACK's way), on
the test device (``COSMO_TEST_DEVICE``, tests/ntk/conftest.py).

For every entry of the registry (cosmo_optim/ntk/rules/) a one-layer model followed by a fixed
nonlinear read-out to C = 3 outputs: the rule's per-sample gradients of the layer's parameters
must equal ``vmap(jacrev)`` of the same model, and every form of the table
(cosmo_optim/ntk/forms.py) that applies must add the kernel ``Σ_c <g_ic, g_jc>`` (and the full
one) of those torch.func gradients. A rule added to the registry without a case here fails
:func:`test_every_rule_of_the_registry_has_cases`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from cosmo_optim.ntk import forms, rules
from cosmo_optim.ntk.recorder import UseRecorder


class Probe(nn.Module):
    """``layer`` then a fixed read-out ``tanh`` · random projection to 3 outputs per sample."""

    def __init__(self, layer: nn.Module, width: int, flatten: bool = True) -> None:
        super().__init__()
        self.layer = layer
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(width, 3, generator=g, dtype=torch.float64))
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        return torch.tanh(h.flatten(1) if self.flatten else h) @ self.proj


class TiedHead(nn.Module):
    """An embedding whose weight is also the output projection (GPT-2's ``wte``/``lm_head``)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.emb(ids)).mean(1)
        return F.linear(h, self.emb.weight)[:, :3]


class ClassToken(nn.Module):
    """ViT's embeddings: a class token expanded over the samples, a learned position
    embedding added to every sample (``add`` as ``x + p`` or ``torch.add(p, x)``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.cls = nn.Parameter(torch.randn(1, 1, 4, generator=g))
        self.pos = nn.Parameter(torch.randn(1, 4, 4, generator=g))
        self.how = how
        self.register_buffer("proj", torch.randn(16, 3, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        h = h + self.pos if self.how == "method" else torch.add(self.pos, h)
        return torch.tanh(h.flatten(1)) @ self.proj


def _bn(layer: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(2)
    layer.running_mean.uniform_(-0.5, 0.5, generator=g)
    layer.running_var.uniform_(0.5, 2.0, generator=g)
    nn.init.uniform_(layer.weight, 0.5, 1.5)
    return layer.eval()


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _ids(*shape: int) -> torch.Tensor:
    ids = torch.randint(0, 9, shape, generator=torch.Generator().manual_seed(1))
    ids[0, 0] = ids[1, 1]  # a token shared across samples: cross terms are not 0
    return ids


Case = tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]

#: torch function of the registry -> cases (model, probe batch of 4 samples)
CASES: dict[object, dict[str, Case]] = {
    F.linear: {
        "rows": (lambda: Probe(nn.Linear(4, 5), 3 * 5), lambda: _x(4, 3, 4)),
        "flat": (lambda: Probe(nn.Linear(4, 5), 5), lambda: _x(4, 4)),
    },
    torch.conv1d: {
        "padded": (lambda: Probe(nn.Conv1d(2, 3, 3, padding=1), 3 * 7), lambda: _x(4, 2, 7)),
        "strided": (lambda: Probe(nn.Conv1d(2, 3, 3, stride=2, dilation=2), 3 * 3),
                    lambda: _x(4, 2, 9)),
        "grouped": (lambda: Probe(nn.Conv1d(2, 4, 3, groups=2), 4 * 5), lambda: _x(4, 2, 7)),
    },
    torch.conv2d: {
        "same": (lambda: Probe(nn.Conv2d(2, 3, 2, padding="same"), 3 * 25),
                 lambda: _x(4, 2, 5, 5)),
        "strided": (lambda: Probe(nn.Conv2d(2, 3, 3, stride=2, padding=1), 3 * 9),
                    lambda: _x(4, 2, 5, 5)),
        "grouped": (lambda: Probe(nn.Conv2d(2, 4, 3, groups=2), 4 * 9), lambda: _x(4, 2, 5, 5)),
    },
    F.embedding: {
        "padding": (lambda: Probe(nn.Embedding(9, 4, padding_idx=0), 5 * 4), lambda: _ids(4, 5)),
        "tied": (TiedHead, lambda: _ids(4, 5)),
    },
    F.layer_norm: {
        "rows": (lambda: Probe(nn.LayerNorm(4), 3 * 4), lambda: _x(4, 3, 4)),
    },
    torch.Tensor.expand: {"class token": (lambda: ClassToken("method"), lambda: _x(4, 3, 4))},
    torch.Tensor.add: {"position": (lambda: ClassToken("method"), lambda: _x(4, 3, 4))},
    torch.add: {"position": (lambda: ClassToken("function"), lambda: _x(4, 3, 4))},
    F.batch_norm: {
        "1d": (lambda: Probe(_bn(nn.BatchNorm1d(4)), 4), lambda: _x(4, 4)),
        "2d": (lambda: Probe(_bn(nn.BatchNorm2d(3)), 3 * 9), lambda: _x(4, 3, 3, 3)),
    },
}

PARAMS = [(fn, name) for fn, cases in CASES.items() for name in cases]


def _build(fn: object, name: str,
           device: torch.device | None = None) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    make, batch = CASES[fn][name]
    return make().double().to(device), batch().to(device)


def _torch_func_grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``∂f_ic/∂θ`` per parameter by ``vmap(jacrev)`` over samples: (N, C, P) each."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    return {n: j.reshape(x.shape[0], 3, -1) for n, j in jac.items()}


def _recorded(model: nn.Module, x: torch.Tensor):
    """The uses of every parameter in one forward, and the cotangents of their outputs."""
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    recorder = UseRecorder({id(t): n for n, t in leaves.items()})
    with recorder:
        f = functional_call(model, leaves, (x,))
    outs = {id(u.out): u.out for us in recorder.uses.values() for u in us}
    delta = {k: torch.stack([torch.autograd.grad(f[:, c].sum(), y, retain_graph=True)[0]
                             for c in range(f.shape[1])]) for k, y in outs.items()}
    return recorder.uses, delta


def test_every_rule_of_the_registry_has_cases() -> None:
    assert set(CASES) == set(rules.RULES)


@pytest.mark.parametrize(("fn", "name"), PARAMS, ids=[f"{getattr(f, '__name__', f)}-{n}"
                                                     for f, n in PARAMS])
def test_per_sample_gradients_equal_torch_func(fn: object, name: str,
                                              device: torch.device) -> None:
    model, x = _build(fn, name, device)
    uses, delta = _recorded(model, x)
    reference = _torch_func_grads(model, x)
    for n, us in uses.items():
        assert rules.qualifies(us, x.shape[0]), n
        assert any(u.rule is rules.RULES[fn] for u in us), n
        G = rules.per_sample_grads(us, delta)
        torch.testing.assert_close(G, reference[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(("fn", "name"), PARAMS, ids=[f"{getattr(f, '__name__', f)}-{n}"
                                                     for f, n in PARAMS])
def test_every_form_that_applies_adds_the_kernel_of_the_torch_func_gradients(
        fn: object, name: str, full: bool, device: torch.device) -> None:
    """Terms of two chunks of samples, joined as the stored plan joins them."""
    model, x = _build(fn, name, device)
    (uses_a, delta_a), (uses_b, delta_b) = _recorded(model, x[:2]), _recorded(model, x[2:])
    reference = _torch_func_grads(model, x)
    for n, us in uses_a.items():
        J = reference[n]
        R = torch.einsum("icp,jdp->ijcd" if full else "icp,jcp->ij", J, J)
        applied = [f for f in forms.FORMS if f.applies(us)]
        assert applied, n
        for form in applied:
            K = torch.zeros_like(R)
            term = form.join([form.term(us, delta_a), form.term(uses_b[n], delta_b)])
            form.add(K, term, bias=False, free=1 << 30, full=full)
            torch.testing.assert_close(K, R, rtol=1e-10, atol=1e-12, msg=f"{n} {form.label}")


def test_a_tied_weight_takes_the_tied_form_and_a_bias_merges_into_its_weights_gram() -> None:
    uses, _ = _recorded(*_build(F.embedding, "tied"))
    assert [type(f) for f in forms.FORMS if f.applies(uses["emb.weight"])] == [
        forms.PerSample, forms.Tied]
    uses, _ = _recorded(*_build(F.linear, "rows"))
    choices = {n: forms.choose(us, 4, 3, 8, full=False, budget=1 << 30, prefer=(forms.Gram,))
               for n, us in uses.items()}
    assert forms.merge_biases(choices, uses) == {"layer.weight": "layer.bias"}
