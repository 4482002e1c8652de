"""State a model carries as tensor attributes (a KV cache, a recurrent state, the old
spectral-norm weight): every forward starts from the state at the call, the kernel is exact or
a clear error naming the attribute, and the model keeps its attributes bit for bit."""

from __future__ import annotations

import contextlib

import pytest
import torch
from brute_force import assert_exact, brute_force_ntk
from torch import nn

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import ModelInputs

X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


class Cached(nn.Module):
    """Keeps every projected batch in a tensor attribute (a cache that grows with each call)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.out = nn.Linear(3, 4), nn.Linear(4, 2)
        self.cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.q(x)
        self.cache = h.detach() if self.cache is None else torch.cat([self.cache, h.detach()])
        return self.out(torch.tanh(h))


class Recurrent(nn.Module):
    """A GRU cell carrying its hidden state from call to call (``carry=False``: stateless)."""

    def __init__(self, state_rows: int | None = None, carry: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell, self.head, self.carry = nn.GRUCell(3, 5), nn.Linear(5, 1), carry
        self.h = None if state_rows is None else torch.full((state_rows, 5), 0.1,
                                                            dtype=torch.float64)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        h = self.cell(x, self.h if h is None else h)
        if self.carry:
            self.h = h.detach()
        return self.head(h)


def test_a_cache_held_as_an_attribute_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    model = Cached().double()
    model(X)
    cache = model.cache
    assert_exact(empirical_ntk(model, X, verify=True), brute_force_ntk(model, X))
    assert model.cache is cache and cache.shape == (6, 4)


@pytest.mark.parametrize("method", ["auto", "jacobian"])
def test_a_recurrent_state_started_afresh_gives_the_kernel_of_the_first_step(method: str) -> None:
    model = Recurrent().double()
    K = empirical_ntk(model, X, method=method, verify=True)
    assert_exact(K, brute_force_ntk(Recurrent(carry=False).double(), X))
    assert model.h is None  # the user's state, as it was


@pytest.mark.parametrize("rows", [1, 6, 32])
def test_a_state_with_rows_of_another_batch_is_named_with_its_fix(rows: int) -> None:
    model = Recurrent(state_rows=rows).double()
    state = model.h
    with pytest.raises(ValueError, match=rf"attribute 'h' \(shape \({rows}, 5\)\).*reset it "
                                         r"before the call.*as an input"):
        empirical_ntk(model, X)
    assert model.h is state


def test_the_state_passed_as_an_input_is_exact() -> None:
    """The second fix the error names: one row of state per probe sample, as an input."""
    model = Recurrent(carry=False).double()
    h = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    K = empirical_ntk(model, ModelInputs((X,), {"h": h}), verify=True)
    assert_exact(K, brute_force_ntk(model, {"x": X, "h": h}))


class InPlace(nn.Module):
    """Decays a state tensor in place at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.state = torch.ones(2, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.mul_(0.5)
        return self.lin(x) * self.state


def test_a_state_written_in_place_is_restored_and_every_forward_starts_from_it() -> None:
    torch.manual_seed(0)
    model = InPlace().double()
    state = model.state
    K = empirical_ntk(model, X, verify=True)
    assert model.state is state and torch.equal(state, torch.ones(2, dtype=torch.float64))
    reference = nn.Linear(3, 2).double()
    reference.load_state_dict(model.lin.state_dict())
    assert_exact(K, 0.25 * brute_force_ntk(reference, X))  # each forward: state 1 -> 0.5


@pytest.mark.parametrize("train_mode", [False, True])
def test_the_old_spectral_norm_weight_attribute_is_left_as_it_was(train_mode: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(torch.nn.utils.spectral_norm(nn.Linear(3, 8)), nn.Tanh(),
                        nn.Linear(8, 1)).double()
    net(X)
    weight, u = net[0].weight, net[0].weight_u.clone()
    empirical_ntk(net, X, train_mode=train_mode)
    assert net[0].weight is weight and torch.equal(net[0].weight_u, u)


class _FailsOnMarkedSample(nn.Module):
    """Counts its calls; raises on a sample whose first input is the marker 100."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if bool((x[:, 0] == 100).any()):
            raise RuntimeError("this sample breaks the forward")
        return self.lin(x)


def test_the_self_check_puts_the_modules_state_back_when_a_forward_raises() -> None:
    """per_sample.verify runs the user's module one sample at a time; a forward that raises
    must not leave its counter (or cache) changed."""
    from cosmo_optim.ntk import per_sample

    model = _FailsOnMarkedSample()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    x[4, 0] = 100  # the last sample, which the self-check always recomputes
    with pytest.raises(RuntimeError, match="this sample breaks the forward"):
        per_sample.verify(torch.zeros(5, 5), model, ModelInputs(x), ["lin.weight", "lin.bias"],
                          lambda out, sub: out, 3, False, torch.float32,
                          contextlib.nullcontext)
    assert model.calls == 0
