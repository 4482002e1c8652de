"""Model inputs as users pass them (a tensor, positional arguments, keyword arguments; batch dims
declared or inferred; shared arguments), against the brute-force per-sample kernel."""

from __future__ import annotations

import pytest
import torch
from brute_force import assert_exact, brute_force_ntk
from families import needs, tiny_bert, tiny_unet
from torch import nn

from cosmo_optim import empirical_ntk, ntk_eigen
from cosmo_optim.ntk import ModelInputs

METHODS = ["auto", "structured", "jacobian"]


class Keywords(nn.Module):
    """forward(x, mask=None, scale=1.0, bias=None): a per-sample mask, a scalar, a shared bias."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.tanh(self.a(x) * scale)  # x: (N, S, d)
        if mask is not None:
            h = h * mask[..., None]
        if bias is not None:
            h = h + bias[: h.shape[-1]]
        return self.b(h.sum(1))


def batch(n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(n, 3, generator=g) > 0.3).double()
    return {"x": torch.randn(n, 3, 4, generator=g, dtype=torch.float64), "mask": mask}


def model() -> nn.Module:
    torch.manual_seed(0)
    return Keywords().double()


def test_model_inputs_split_select_and_move_a_batch() -> None:
    ids, mask = torch.arange(28).reshape(4, 7), torch.ones(4, 7)
    shared = torch.ones(7, 7)
    b = ModelInputs({"input_ids": ids, "attention_mask": mask, "t": torch.tensor(3.0),
                     "causal": shared, "mode": "x"})
    assert len(b) == 4
    assert [t.shape[0] for t in b.batched()] == [4, 4]
    sub = b[torch.tensor([3, 1])]
    assert torch.equal(sub.kwargs["input_ids"], ids[[3, 1]]) and sub.index.tolist() == [3, 1]
    assert sub.kwargs["causal"] is shared and sub.kwargs["mode"] == "x"
    assert sub[1:].index.tolist() == [1]  # positions in the probe batch, through subsets
    cast = b.to(dtype=torch.float64)
    assert cast.kwargs["input_ids"].dtype == torch.int64  # token ids keep their dtype
    assert cast.kwargs["attention_mask"].dtype == cast.kwargs["t"].dtype == torch.float64
    copy = b.clone()
    copy.kwargs["attention_mask"].zero_()
    assert mask.sum() == 28  # a forward writing into its inputs never reaches the caller's


def test_batch_dims_are_declared_per_argument_or_inferred() -> None:
    seq_first = ModelInputs((torch.ones(3, 5, 2), torch.ones(5, 2)), batch_dim=1)
    assert len(seq_first) == 5 and seq_first[:2].args[0].shape == (3, 2, 2)
    assert seq_first[:2].args[1].shape == (5, 2)  # (5, 2) has 2 on dim 1: shared
    square = torch.ones(4, 4)  # a shared mask whose length happens to be N
    inferred = ModelInputs({"x": torch.ones(4, 2), "mask": square})
    declared = ModelInputs({"x": torch.ones(4, 2), "mask": square}, batch_dim={"mask": None})
    assert inferred[:1].kwargs["mask"].shape == (1, 4)
    assert declared[:1].kwargs["mask"] is square
    both = ModelInputs((torch.ones(4, 2),), {"m": torch.ones(4)}, batch_dim={"m": None})
    assert both[:2].args[0].shape == (2, 2) and both[:2].kwargs["m"].shape == (4,)


@pytest.mark.parametrize(("inputs", "message"), [
    ([torch.ones(3), torch.ones(3)], r"a list;.*pass a tuple for several positional arguments"),
    ((torch.tensor(1.0), 3), r"no tensor holds samples"),
    ({"x": torch.ones(0, 2)}, r"argument 'x' has shape \(0, 2\), no sample"),
    ("text", r"Invalid inputs: a str"),
])
def test_inputs_that_cannot_be_split_per_sample_are_named(inputs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        empirical_ntk(nn.Linear(3, 1), inputs)


def test_a_batch_dim_naming_no_argument_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['mask'\] are not arguments of the batch"):
        ModelInputs({"x": torch.ones(3, 2)}, batch_dim={"mask": None})
    with pytest.raises(ValueError, match=r"Invalid batch_dim: 'rows'"):
        ModelInputs({"x": torch.ones(3, 2)}, batch_dim="rows")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_keyword_inputs_give_the_brute_force_kernel(method: str) -> None:
    net, b = model(), batch()
    assert_exact(empirical_ntk(net, b, method=method, verify=True), brute_force_ntk(net, b))


def test_positional_keyword_and_shared_arguments_together() -> None:
    net, b = model(), batch()
    bias = torch.linspace(-1, 1, 8, dtype=torch.float64)  # 8 != N: shared by inference
    inputs = ModelInputs((b["x"],), {"mask": b["mask"], "scale": 0.5, "bias": bias})
    R = brute_force_ntk(_Bound(net, scale=0.5, bias=bias), {"x": b["x"], "mask": b["mask"]})
    assert_exact(empirical_ntk(net, inputs, output="full", verify=True),
                 brute_force_ntk(_Bound(net, scale=0.5, bias=bias),
                                 {"x": b["x"], "mask": b["mask"]}, full=True))
    assert_exact(empirical_ntk(net, inputs), R)


def test_a_shared_tensor_of_length_n_counts_once_declared() -> None:
    net, b = model(), batch(n=8)
    bias = torch.linspace(-1, 1, 8, dtype=torch.float64)  # 8 == N: declare it shared
    inputs = ModelInputs({**b, "bias": bias}, batch_dim={"bias": None})
    R = brute_force_ntk(_Bound(net, bias=bias), b)
    assert_exact(empirical_ntk(net, inputs), R)
    with pytest.raises(ValueError, match=r"forward raised on a chunk.*batch_dim=\{name: None\}"):
        empirical_ntk(net, {**b, "bias": bias})  # bias split per sample: (8,) rows for 8 samples


def test_sequence_first_inputs_with_batch_dim_1() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0).double()  # (S, N, E) inputs
    head = nn.Linear(4, 1).double()
    net = nn.Sequential(layer, _Last(), head)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    K = empirical_ntk(net, ModelInputs(x, batch_dim=1), verify=True)
    R = brute_force_ntk(nn.Sequential(_SeqFirst(), net), x.transpose(0, 1))
    assert_exact(K, R)


def test_hugging_face_keyword_batches_with_padding() -> None:
    transformers = needs("transformers")
    bert = tiny_bert().double().eval()
    ids = torch.randint(1, 40, (4, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 3:] = 0
    mask[3, 4:] = 0
    encoded = transformers.BatchEncoding({"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": torch.zeros_like(ids)})
    logits = lambda out: out.logits  # noqa: E731
    K = empirical_ntk(bert, encoded, output=logits, verify=True)
    assert_exact(K, brute_force_ntk(bert, dict(encoded), logits), 1e-8)


def test_diffusion_unet_with_a_scalar_timestep_and_conditioning() -> None:
    unet = tiny_unet().double().eval()
    g = torch.Generator().manual_seed(0)
    b = {"sample": torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64),
         "timestep": torch.tensor(10),  # 0-d: shared by every sample
         "encoder_hidden_states": torch.randn(2, 4, 8, generator=g, dtype=torch.float64)}
    pixels = lambda out: out.sample[:, 0, :2, :2]  # noqa: E731
    K = empirical_ntk(unet, b, output=pixels)
    assert_exact(K, brute_force_ntk(unet, b, pixels))


def test_ntk_eigen_takes_the_same_inputs() -> None:
    net, b = model(), batch(n=6)
    res = ntk_eigen(net, b, k=3)
    vals = torch.linalg.eigvalsh(brute_force_ntk(net, b)).flip(0)[:3]
    torch.testing.assert_close(res.eigenvalues, vals, rtol=1e-9, atol=0)


class _Bound(nn.Module):
    """The model with keyword arguments fixed: the brute force's per-sample function."""

    def __init__(self, net: nn.Module, **fixed: object) -> None:
        super().__init__()
        self.net, self.fixed = net, fixed

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(x, mask=mask, **self.fixed)


class _Last(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (S, N, E) -> (N, E)
        return h[-1]


class _SeqFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, S, E) -> (S, N, E)
        return x.transpose(0, 1)
