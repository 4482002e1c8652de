"""Step time of `CosmoSGD` against `torch.optim.SGD(momentum=β, foreach=True)`.

Both optimisers update their own copy of a ~10M-parameter MLP with the same fixed gradients;
their steps alternate in one process so that machine noise hits both alike. Prints the median
of the per-pair time ratios (target ≤ 1.03).

    python benchmarks/bench_optim.py            # the real measurement
    python benchmarks/bench_optim.py --smoke    # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cosmo_optim import Cosmology, CosmoSGD


def make_model(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers)


def with_gradients(model: nn.Module) -> list[nn.Parameter]:
    params = list(model.parameters())
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def timed_step(opt: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def run(width: int, depth: int, repeats: int, warmup: int) -> dict[str, float]:
    cosmology = Cosmology.from_sgd(lr=1e-4, momentum=0.9)
    torch.manual_seed(0)
    base = make_model(width, depth)
    n_params = sum(p.numel() for p in base.parameters())
    reference_params = with_gradients(base)
    cosmo_params = with_gradients(make_model(width, depth))
    reference = torch.optim.SGD(
        reference_params, lr=cosmology.lr, momentum=cosmology.momentum, foreach=True
    )
    cosmo = CosmoSGD(cosmo_params, cosmology=cosmology, foreach=True)
    for _ in range(warmup):
        timed_step(reference)
        timed_step(cosmo)
    ratios, t_ref, t_cosmo = [], [], []
    for i in range(repeats):
        # Alternate which goes first so neither always runs on a warmer cache.
        if i % 2:
            a, b = timed_step(reference), timed_step(cosmo)
        else:
            b, a = timed_step(cosmo), timed_step(reference)
        t_ref.append(a)
        t_cosmo.append(b)
        ratios.append(b / a)
    return {
        "params": n_params,
        "sgd_ms": 1e3 * statistics.median(t_ref),
        "cosmo_ms": 1e3 * statistics.median(t_cosmo),
        "median_ratio": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few repeats")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    if args.smoke:
        result = run(width=64, depth=2, repeats=10, warmup=2)
    else:
        result = run(width=1580, depth=4, repeats=args.repeats, warmup=20)
    print(f"parameters           {result['params']:,}")
    print(f"torch.optim.SGD step {result['sgd_ms']:.2f} ms (median)")
    print(f"CosmoSGD step        {result['cosmo_ms']:.2f} ms (median)")
    print(f"median ratio         {result['median_ratio']:.3f}  (target ≤ 1.03)")
    return result


if __name__ == "__main__":
    main()
