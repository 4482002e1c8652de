"""The memory plan's own accounting against the measured peak (issue #31: within 25 %).

Each (request, budget) runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc
then returns freed large blocks, so the resident set shows what is held). After a warm-up
call on 2 samples, one ``empirical_ntk`` call's rise of the resident-set high-water mark is
compared with the plan's prediction: twice the kernel, the chunk's samples times the bytes per
sample the plan assumes, and the largest term it holds (a group's kept terms in the stored
plan, one component's term in the streaming plan).

    python benchmarks/bench_plan_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = """
import json, resource, sys
import torch
from torch import nn
import cosmo_optim.ntk.engine as engine
from cosmo_optim import empirical_ntk
torch.set_num_threads(1)
case, budget, smoke = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
torch.manual_seed(0)
n = 16 if smoke else None
if case in ("mlp-trace", "mlp-full"):
    model = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
                          nn.Linear(512, 4))
    x, kw = torch.randn(n or 512, 64), {"output": "full" if case == "mlp-full" else "trace"}
elif case == "gram":
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 1), nn.Flatten(),
                          nn.AdaptiveAvgPool1d(1))
    x, kw = torch.randn(n or 256, 64, 16), {"method": "structured"}
else:
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 16 * 16, 10))
    x, kw = torch.randn(n or 64, 3, 16, 16), {}
plans = []
planner = engine.structured_plan
engine.structured_plan = lambda *a, **k: plans.append(planner(*a, **k)) or plans[-1]
empirical_ntk(model, x[:2], **kw)
plans.clear()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
empirical_ntk(model, x, memory_budget=budget, **kw)
rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
p = plans[0]
if p.streaming:
    held = max(c.cost.transient for c in p.forms.values())
else:
    held = max(sum(p.forms[m].cost.kept for m in g) for g in p.groups)
predicted = 2 * p.kernel + p.chunk * p.per_sample + held
plan = "streaming" if p.streaming else f"stored, {len(p.groups)} pass(es), chunks of {p.chunk}"
print(json.dumps({"plan": plan, "predicted": predicted, "rise": rise}))
"""

CASES = {"mlp-trace": "MLP 64-512-512-4, N = 512, trace",
         "mlp-full": "MLP 64-512-512-4, N = 512, full",
         "gram": "Gram, sequences of 64 rows, N = 256, method='structured'",
         "conv": "CNN conv32-conv32-linear, N = 64, trace"}
BUDGETS = (64 << 20, 1 << 30)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="16 samples, one budget: checks it works")
    args = ap.parse_args(argv)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    print("| request | budget | plan | predicted | measured peak rise | predicted / measured |")
    print("|---|---|---|---|---|---|")
    rows = []
    for case, label in CASES.items():
        for budget in BUDGETS[-1:] if args.smoke else BUDGETS:
            out = subprocess.run([sys.executable, "-c", _CHILD, case, str(budget),
                                  "1" if args.smoke else "0"], capture_output=True, text=True,
                                 check=True, env=env).stdout
            row = {"case": case, "budget": budget, **json.loads(out.strip().splitlines()[-1])}
            rows.append(row)
            print(f"| {label} | {budget / 2**20:.0f} MiB | {row['plan']} | "
                  f"{row['predicted'] / 1e6:.1f} MB | {row['rise'] / 1e6:.1f} MB | "
                  f"{row['predicted'] / max(row['rise'], 1):.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
