"""Cold start of `empirical_ntk`: the first call of a fresh process against its second.

Each of ``--runs`` fresh processes (one thread) builds a 3-8-2 tanh MLP, calls
``empirical_ntk`` twice on 5 samples and reports both calls' CPU time (``time.process_time``)
and whether ``torch._dynamo`` (the compiler stack, ~800 modules) was imported. Issue #31's
target: the first call at most 0.3 s of CPU above the second.

    python benchmarks/bench_cold_start.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = """
import json, sys, time
import torch
from torch import nn
torch.set_num_threads(1)
from cosmo_optim import empirical_ntk
net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
x = torch.randn(5, 3)
t0 = time.process_time(); empirical_ntk(net, x)
t1 = time.process_time(); empirical_ntk(net, x)
t2 = time.process_time()
print(json.dumps({"first_s": t1 - t0, "second_s": t2 - t1,
                  "dynamo": "torch._dynamo" in sys.modules}))
"""


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="fresh processes")
    args = ap.parse_args(argv)
    print("| run | first call | second call | first − second | torch._dynamo imported |")
    print("|---|---|---|---|---|")
    rows = []
    for run in range(args.runs):
        out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                             check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"| {run + 1} | {row['first_s']:.3f} s | {row['second_s']:.3f} s | "
              f"{row['first_s'] - row['second_s']:.3f} s | {row['dynamo']} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
