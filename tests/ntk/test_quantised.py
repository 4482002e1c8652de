"""Quantised models and weights a forward writes: dynamic int8 and live observers couple samples
(clear errors naming the cause and a fix that works), frozen fake quantisation and max_norm
embeddings are exact, against the brute-force per-sample kernel."""

from __future__ import annotations

import pytest
import torch
import torch.ao.quantization as tq
from brute_force import assert_exact, brute_force_ntk
from torch import nn

from cosmo_optim import empirical_ntk

X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_dynamic_int8_quantisation_is_a_coupling_named_with_its_fix() -> None:
    """One activation range per batch: a sample's outputs depend on its companions. The
    coupling proof's float64 rerun, which the int8 kernels refuse, no longer crashes."""
    spec = {"a": tq.default_dynamic_qconfig, "b": tq.default_dynamic_qconfig}
    model = tq.quantize_dynamic(Net(), spec, dtype=torch.qint8)
    with pytest.raises(ValueError, match=r"samples are coupled.*\['a', 'b'\] are dynamically "
                                         r"quantised.*before quantize_dynamic"):
        empirical_ntk(model, X)


def qat() -> nn.Module:
    model = Net()
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    model = tq.prepare_qat(model.train())
    model(X)  # one calibration step
    return model


@pytest.mark.parametrize("train_mode", [False, True])
def test_live_observers_are_refused_with_the_fix(train_mode: bool) -> None:
    with pytest.raises(ValueError, match=r"fake-quantise with a live observer.*"
                                         r"disable_observer"):
        empirical_ntk(qat(), X, train_mode=train_mode)


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("method", ["auto", "jacobian"])
def test_frozen_fake_quantisation_is_exact(train_mode: bool, method: str) -> None:
    model = qat()
    model.apply(tq.disable_observer)  # the fix the refusal names
    K = empirical_ntk(model, X, train_mode=train_mode, method=method, verify=True)
    assert_exact(K, brute_force_ntk(model, X, train=train_mode), 1e-5)  # float32


class Tied(nn.Module):
    """An embedding with max_norm tied to the output projection."""

    def __init__(self, tied: bool = True, scale: float = 3.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 6, max_norm=1.0)
        self.out = nn.Linear(6, 11, bias=False)
        if tied:
            self.out.weight = self.emb.weight
        with torch.no_grad():
            self.emb.weight.mul_(scale)  # rows above max_norm: the forward renormalises them

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(t))).mean(1)[:, :3]


T = torch.randint(0, 11, (5, 4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["auto", "jacobian", "structured"])
def test_a_tied_max_norm_embedding_renormalising_rows_is_named_with_its_fix(method: str) -> None:
    model = Tied().double()
    weight = model.emb.weight.detach().clone()
    with pytest.raises(ValueError, match=r"coupled.*\['emb'\] have max_norm.*"
                                         r"torch.embedding_renorm_"):
        empirical_ntk(model, T, method=method)
    assert torch.equal(model.emb.weight, weight)  # the forward's writes never reach the user's
    with torch.no_grad():  # the fix the message names
        torch.embedding_renorm_(model.emb.weight, torch.arange(11), 1.0, 2.0)
    assert_exact(empirical_ntk(model, T, method=method, verify=True), brute_force_ntk(model, T))


@pytest.mark.parametrize(("tied", "scale"), [(True, 0.1), (False, 3.0)])
@pytest.mark.parametrize("output", ["trace", "full"])
def test_max_norm_embeddings_are_exact_where_samples_stay_independent(
        tied: bool, scale: float, output: str) -> None:
    model = Tied(tied, scale).double()
    weight = model.emb.weight.detach().clone()
    K = empirical_ntk(model, T, output=output, verify=True)
    assert_exact(K, brute_force_ntk(model, T, full=output == "full"))
    assert torch.equal(model.emb.weight, weight)
