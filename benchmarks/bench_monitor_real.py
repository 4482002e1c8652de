"""The monitor's overhead on a ResNet-18 CIFAR-size training loop at its defaults (issue #19).

A plain loop (batch 128, momentum SGD, cross-entropy, synthetic CIFAR-shaped data) with and
without a `CosmologyTracker` at its defaults (probe_size 16, every 50 steps, top_k 4,
ntk_method "fit", with the loss). The overhead of a run is the time of its probes over the
time of the training steps between them: ``probe / (every_n_steps · step)``. Both are measured
in one process in alternated rounds (a plain training step, then a reading, `--repeats`
times; medians of CPU time, ``time.process_time``, so both share the machine's load), one
thread unless `--threads`; the step hook the tracker adds to every step is timed too (steps
with the tracker attached but no probe due).

    python benchmarks/bench_monitor_real.py            # ResNet-18, batch 128 (a few minutes)
    python benchmarks/bench_monitor_real.py --smoke    # narrow ResNet, batch 8: checks it works
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import resnet18

from cosmo_optim import CosmologyTracker


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
          y: torch.Tensor) -> float:
    start = time.process_time()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return time.process_time() - start


def measure(smoke: bool, batch: int, repeats: int) -> dict[str, float]:
    """Median training step (plain, and with the tracker attached between probes) and the
    median probe, in seconds, and the overhead at the tracker's default interval."""
    torch.manual_seed(0)
    model, data, C = resnet18(smoke)
    model.train()
    x, y = data(batch), torch.randint(C, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _step(model, opt, x, y)  # warm-up
    tracker = CosmologyTracker(model, nn.CrossEntropyLoss(), optimizer=opt,
                               probe_batch=(x[:16], y[:16]))
    every = tracker.config.every_n_steps
    assert every is not None
    tracker.read(0)  # warm-up
    plain, probes = [], []
    for _ in range(repeats):  # alternated: a plain step, then a reading
        plain.append(_step(model, opt, x, y))
        start = time.process_time()
        tracker.read(0)
        probes.append(time.process_time() - start)
    handle = tracker.attach(opt)  # probes at attach (step 0); the next is due at `every`
    hooked = [_step(model, opt, x, y) for _ in range(min(repeats, every - 1))]
    handle.remove()
    step, probe = statistics.median(plain), statistics.median(probes)
    return {"step": step, "hooked_step": statistics.median(hooked), "probe": probe,
            "every": every, "overhead": probe / (every * step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="narrow ResNet, batch 8")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = measure(args.smoke, 8 if args.smoke else args.batch, 1 if args.smoke else args.repeats)
    print(f"training step {r['step']:.3f} s (with the tracker's step hook {r['hooked_step']:.3f} s);"
          f" one probe {r['probe']:.2f} s = {r['probe'] / r['step']:.1f} steps; every "
          f"{r['every']} steps: overhead {100 * r['overhead']:.1f} %")


if __name__ == "__main__":
    main()
