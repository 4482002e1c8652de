"""FSDP-sharded models (FSDP2 fully_shard, FSDP1 use_orig_params) on 1 and 2 gloo ranks on the
CPU: each rank's kernel against the brute-force kernel of the unsharded model on its batch."""

from __future__ import annotations

import copy
import json
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from brute_force import brute_force_ntk, relative_error
from gloo_ranks import exit_rank
from torch import nn

from cosmo_optim import empirical_ntk


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.LayerNorm(8),
                         nn.Linear(8, 2)).double()


def _batch(seed: int) -> torch.Tensor:
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _fsdp2(model: nn.Module, **kw: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0], **kw)
    fully_shard(model[2], **kw)
    return fully_shard(model, **kw)


def _fsdp1(model: nn.Module, **kw: Any) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(model, device_id=torch.device("cpu"),
                                    auto_wrap_policy=ModuleWrapPolicy({nn.Linear}), **kw)


def _bf16() -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16)  # FSDP's forward runs in bfloat16


def _error(call: Any) -> str:
    try:
        call()
    except ValueError as error:
        return str(error)
    return ""


def _checks(rank: int) -> dict[str, Any]:
    """Every rank: relative errors against brute force, refusals, and what the call left."""
    base, x = _model(), _batch(rank)  # each rank its own probe batch
    R, full = brute_force_ntk(base, x), brute_force_ntk(base, x, full=True)
    out: dict[str, Any] = {}
    two = _fsdp2(copy.deepcopy(base))
    hooks = [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in two.modules()]
    out["fsdp2"] = relative_error(empirical_ntk(two, x, verify=True), R)
    out["fsdp2_jacobian"] = relative_error(empirical_ntk(two, x, method="jacobian"), R)
    out["fsdp2_full"] = relative_error(empirical_ntk(two, x, output="full"), full)
    shared = _batch(7)  # distributed=True: one batch split across the ranks
    out["fsdp2_split"] = relative_error(empirical_ntk(two, shared, distributed=True),
                                        brute_force_ntk(base, shared))
    mixed = _fsdp2(copy.deepcopy(base).float(), mp_policy=_bf16())
    out["fsdp2_bf16"] = relative_error(empirical_ntk(mixed, x.float()),
                                       brute_force_ntk(copy.deepcopy(base).bfloat16(),
                                                       x.bfloat16()))
    out["fsdp2_intact"] = (all(type(p).__name__ == "DTensor" for p in two.parameters())
                           and hooks == [len(m._forward_pre_hooks) + len(m._forward_hooks)
                                         for m in two.modules()]
                           and all(p.grad is None for p in two.parameters()))
    kept = _fsdp2(copy.deepcopy(base), reshard_after_forward=False)
    loss = kept(x).square().sum()  # between a forward and its backward: parameters unsharded
    out["fsdp2_unsharded"] = relative_error(empirical_ntk(kept, x), R)
    loss.backward()  # FSDP's own backward still runs
    one = _fsdp1(copy.deepcopy(base), use_orig_params=True)
    out["fsdp1"] = relative_error(empirical_ntk(one, x, verify=True), R)
    first = [n for n, _ in one.named_parameters()][:2]  # wrapper names, as the user sees them
    out["fsdp1_params"] = relative_error(empirical_ntk(one, x, params=first),
                                         brute_force_ntk(base, x, names=["0.weight", "0.bias"]))
    out["fsdp1_intact"] = [type(m).__name__ for m in one._fsdp_wrapped_module.children()]
    out["fsdp1_flat"] = _error(lambda: empirical_ntk(_fsdp1(copy.deepcopy(base)), x))
    out["step"] = _step_unchanged(base, x)
    return out


def _step_unchanged(base: nn.Module, x: torch.Tensor) -> bool:
    """A training step after a kernel call equals one without it (FSDP's state untouched)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    params = []
    for call in (False, True):
        model = _fsdp1(copy.deepcopy(base), use_orig_params=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if call:
            empirical_ntk(model, x)
        model(x).square().sum().backward()
        opt.step()
        with FullyShardedDataParallel.summon_full_params(model):
            params.append([p.detach().clone() for p in model.parameters()])
    return all(torch.equal(a, b) for a, b in zip(*params, strict=True))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        Path(out, f"rank{rank}.json").write_text(json.dumps(_checks(rank)))
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()  # gloo threads left at exit can abort the process
    exit_rank()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[1, 2], ids=["1rank", "2ranks"])
def ranks(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    world, out = request.param, tmp_path_factory.mktemp("sharded")
    mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True,
                       start_method="spawn")
    missing = [r for r in range(world) if not (out / f"rank{r}.json").is_file()]
    assert not missing, f"ranks {missing} wrote no result"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("case", ["fsdp2", "fsdp2_jacobian", "fsdp2_full", "fsdp2_split",
                                  "fsdp2_unsharded", "fsdp1", "fsdp1_params"])
def test_sharded_kernels_equal_the_unsharded_brute_force(ranks: list[dict], case: str) -> None:
    for rank in ranks:
        assert rank[case] <= 1e-8, f"{case}: relative error {rank[case]:.2e}"


def test_mixed_precision_kernels_are_those_of_the_bfloat16_forward(ranks: list[dict]) -> None:
    for rank in ranks:
        assert rank["fsdp2_bf16"] <= 2e-2  # the stated low-precision tolerance


def test_the_sharded_model_is_left_as_it_was(ranks: list[dict]) -> None:
    for rank in ranks:
        assert rank["fsdp2_intact"]
        assert rank["fsdp1_intact"] == ["FullyShardedDataParallel", "Tanh",
                                        "FullyShardedDataParallel", "LayerNorm",
                                        "FullyShardedDataParallel"]
        assert rank["step"]


def test_fsdp1_without_original_parameters_is_refused_with_the_fix(ranks: list[dict]) -> None:
    for rank in ranks:
        assert "use_orig_params=True" in rank["fsdp1_flat"]


def test_deepspeed_zero3_parameters_are_refused() -> None:
    model = _model()
    for p in model.parameters():
        p.ds_id = 0  # what ZeRO-3 marks its partitioned parameters with
    with pytest.raises(ValueError, match=r"partitioned by DeepSpeed ZeRO-3.*Not supported"):
        empirical_ntk(model, _batch(0))
