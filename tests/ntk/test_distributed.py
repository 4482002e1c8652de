"""distributed=True: two gloo ranks (127.0.0.1) give the single-process kernel to 1e-6."""

from __future__ import annotations

import gc
import socket
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_ranks import exit_rank
from test_kernel import build
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cosmo_optim import CosmologyTracker, empirical_ntk

# (case, N, output, method): N = 7 splits unevenly (3 + 4); "tied" has a tied embedding,
# "twice" a layer demoted to the jacobian path, "cnn" per-sample conv gradients.
REQUESTS = [("tied", 7, "trace", "auto"), ("twice", 5, "full", "auto"),
            ("cnn", 5, "trace", "auto"), ("tied", 7, "trace", "sketch"),
            ("transformer", 1, "trace", "auto")]


class Centred(nn.Module):
    """Couples samples (subtracts the batch mean) on rank 0 only: one rank refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x - x.mean(0) if dist.get_rank() == 0 else x)


def _deep() -> tuple[nn.Module, torch.Tensor]:
    """Four small layers (eight parameter blocks), five samples: shards of 2 and 3."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(),
                          nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    return model, torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


BUDGETS = range(1500, 12000, 150)  # bytes: from refused to one parameter block


def _budget_sweep() -> list[torch.Tensor | str]:
    """The kernel at every budget of BUDGETS, or the refusal's type: near the smallest budget
    that fits, the two ranks' free memory (shards of 2 and 3 samples) differ."""
    model, x = _deep()
    out: list[torch.Tensor | str] = []
    for b in BUDGETS:
        try:
            out.append(empirical_ntk(model, x, memory_budget=b, distributed=True))
        except (ValueError, RuntimeError) as err:
            out.append(type(err).__name__)
    return out


def _failing_product(rank: int) -> str:
    """Rank 1's product of gathered features raises inside the gather loop (after the ranks
    agreed on their features): every rank must raise, none may wait in the next gather."""
    import cosmo_optim.ntk.distributed as distributed_ntk

    product = distributed_ntk.block

    def failing(*args: object, **kwargs: object) -> torch.Tensor:
        if rank == 1:
            raise RuntimeError("product failed on this rank")
        return product(*args, **kwargs)

    distributed_ntk.block = failing
    try:
        model, x = _deep()
        empirical_ntk(model, x, memory_budget=4000, distributed=True)
        return ""
    except RuntimeError as err:
        return str(err)
    finally:
        distributed_ntk.block = product


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kernel(case: str, n: int, output: str, method: str, distributed: bool) -> torch.Tensor:
    model, x = build(case, torch.float32)
    x = x[:1].expand(n, *x.shape[1:]).clone() if n > x.shape[0] else x[:n]
    kw = {"sketch_dim": 4} if method == "sketch" else {}
    return empirical_ntk(model, x, output=output, method=method, distributed=distributed, **kw)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))  # no endless hang
    try:
        kernels = [_kernel(*r, distributed=True) for r in REQUESTS]
        model, x = build("tanh", torch.float32)
        try:  # a rank holding another probe batch is refused on every rank
            empirical_ntk(model, x + rank, distributed=True)
            refused = ""
        except ValueError as err:
            refused = str(err)
        refusals = []
        for case in ("weights", "swapped"):
            m, xs = build("tanh", torch.float32)
            if case == "weights" and rank == 1:  # e.g. the initial weights never broadcast
                with torch.no_grad():
                    next(m.parameters())[0, 0] += 1e-3
            if case == "swapped":  # same sums, entries swapped on rank 1
                xs = torch.tensor([[1.0, 2.0, 2.0, 1.0], [0.5, 0.0, 0.0, 0.5]])
                xs = xs[:, [1, 0, 3, 2]] if rank == 1 else xs  # [2, 1, 1, 2], ...: same sums
                m = nn.Linear(4, 1)
                torch.nn.init.constant_(m.weight, 0.1)
            try:
                empirical_ntk(m, xs, distributed=True)
                refusals.append("")
            except ValueError as err:
                refusals.append(str(err))
        normed = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
        xb = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
        normed(xb)  # running statistics, the same on both ranks
        ddp = DistributedDataParallel(normed)
        wrapped = empirical_ntk(ddp, xb, distributed=True)
        del ddp  # DDP is a reference cycle: freed in `finally`, while its process group lives
        tracker = CosmologyTracker(nn.Linear(3, 1), nn.MSELoss(), distributed=True,
                                   probe_batch=(xb, torch.full((5, 1), float(rank))))
        try:  # the same inputs, different targets
            tracker.read(0)
            targets = ""
        except ValueError as err:
            targets = str(err)
        try:  # refused on rank 0 only: every rank must raise, none may wait forever
            empirical_ntk(Centred(), torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
                          distributed=True)
            coupled = ""
        except (ValueError, RuntimeError) as err:
            coupled = f"{type(err).__name__}: {err}"
        torch.save({"kernels": kernels, "refused": refused, "coupled": coupled,
                    "refusals": refusals, "wrapped": wrapped, "normed": normed.state_dict(),
                    "targets": targets, "sweep": _budget_sweep(),
                    "product": _failing_product(rank)},
                   f"{out}/{rank}.pt")
    finally:  # a process group still referenced at interpreter exit can abort it (SIGABRT)
        gc.collect()
        dist.destroy_process_group()
    exit_rank()


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True,
                           start_method="spawn")
        return [torch.load(f"{out}/{r}.pt") for r in range(2)]


@pytest.mark.parametrize("i", range(len(REQUESTS)))
def test_two_ranks_equal_the_single_process_kernel(two_ranks: list[dict], i: int) -> None:
    single = _kernel(*REQUESTS[i], distributed=False)
    for rank in two_ranks:
        K = rank["kernels"][i]
        assert K.shape == single.shape
        err = ((K - single).abs().max() / single.abs().max()).item()
        assert err <= 1e-6, f"rank kernel differs from single-process by {err:.1e}"


def test_different_probe_batches_across_ranks_are_refused(two_ranks: list[dict]) -> None:
    for rank in two_ranks:
        assert "differ across ranks" in rank["refused"]


def test_different_weights_or_swapped_inputs_across_ranks_are_refused(two_ranks: list[dict]) -> None:
    for rank in two_ranks:
        weights, swapped = rank["refusals"]
        assert "parameters or buffers that differ across ranks" in weights
        assert "probe batches that differ across ranks" in swapped


def test_a_ddp_wrapped_model_gives_the_kernel_of_its_module(two_ranks: list[dict]) -> None:
    """Its forward would broadcast buffers, run a different number of times on each rank."""
    normed = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    normed.load_state_dict(two_ranks[0]["normed"])
    xb = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    single = empirical_ntk(normed, xb)
    for rank in two_ranks:
        assert ((rank["wrapped"] - single).abs().max() / single.abs().max()).item() <= 1e-6


def test_a_monitor_with_other_targets_on_another_rank_is_refused(two_ranks: list[dict]) -> None:
    for rank in two_ranks:
        assert "the probe batch (inputs or targets) differs across ranks" in rank["targets"]


def test_a_refusal_on_one_rank_reaches_every_rank(two_ranks: list[dict]) -> None:
    """Only rank 0 sees the coupling; rank 1 must not wait in all_gather."""
    assert two_ranks[0]["coupled"].startswith("ValueError")
    assert "couple" in two_ranks[0]["coupled"]
    assert two_ranks[1]["coupled"].startswith("RuntimeError: distributed=True: rank 0")
    assert "couple" in two_ranks[1]["coupled"]


def test_distributed_without_process_group_raises() -> None:
    assert not dist.is_initialized()
    model, x = build("tanh", torch.float32)
    with pytest.raises(ValueError, match=r"without an initialised torch\.distributed"):
        empirical_ntk(model, x, distributed=True)


def test_ranks_with_uneven_shards_agree_on_the_blocks_at_every_budget(two_ranks: list[dict]) -> None:
    """Shards of 2 and 3 samples leave the ranks different free memory; the parameter blocks
    they gather must still be the same on both (else mismatched all_gathers hang or mix)."""
    model, x = _deep()
    single = empirical_ntk(model, x)
    sweeps = [rank["sweep"] for rank in two_ranks]
    kernels = 0
    for b, (mine, theirs) in zip(BUDGETS, zip(*sweeps, strict=True), strict=True):
        if isinstance(mine, str) or isinstance(theirs, str):
            assert mine == theirs == "MemoryBudgetError", (b, mine, theirs)
            continue
        kernels += 1
        for K in (mine, theirs):
            torch.testing.assert_close(K, single, rtol=1e-12, atol=1e-12, msg=f"budget {b}")
    assert kernels > 0 and sweeps[0][0] == "MemoryBudgetError"  # the sweep spans the edge


def test_a_failure_inside_the_gather_loop_reaches_every_rank(two_ranks: list[dict]) -> None:
    assert two_ranks[1]["product"] == "product failed on this rank"
    assert two_ranks[0]["product"].startswith("distributed=True: rank 1 could not compute")
    assert "product failed on this rank" in two_ranks[0]["product"]
