"""Figure 5: the mean field of input-dependent networks follows the homogeneous prediction, and
the perturbations stay frozen (F5).

Networks see N equally spaced inputs on an interval of a few Hubble lengths around x0 = 1
(paper_common) and are trained on the same potential at every input, ℓ(f) = (f − 1)^p / p.
From the kernel at initialisation, U diag(λ) Uᵀ, the script predicts (docs/theory.md T7, T8):

* the mean field φ̄ = mean_i f(x_i) from the homogeneous equation with α_eff = λ_1/N (Eq. 23,
  `predict_mean_field`), and
* every mode amplitude f̃_k = u_kᵀ f from the mode equations (`predict_trajectory`, continuum),

then trains the network and compares. The paper finds the mean evolving as the homogeneous
prediction and a hierarchical separation: the perturbations barely move (F5).

* ``--quick``: width {128, 512} × depth {1, 2} × {relu, erf} × σ_w {1.0, 1.41} ×
  interval {2} Hubble lengths × p {2} × (η, β) = (0.01, 0) × 2 seeds, N = 32, 300 steps:
  32 networks.
* ``--full``: width {64, 128, 256, 512, 1024} × depth {1, 2} × {relu, erf} ×
  σ_w {0.75, 1.0, 1.41} × interval {1, 2, 4} × p {2, 4} × (η, β) ∈ {(0.01, 0), (0.001, 0.9)}
  × 2 seeds: 1440 networks.

Why: (η, β) = (0.01, 0) is gradient descent without momentum as in the paper's scan, and sets
1/H = 0.3 for the interval; p = 2 makes the mode equations exact in the NTK limit (T7), p = 4
tests the linearisation of T8; 300 steps are 100 Hubble times, long enough for the mean field
to settle while a perturbation of mass m relaxes only on 3H/m² (T8).

F5 is reproduced when (a) the median relative end-point error of the mean-field prediction,
|φ̄_pred(T) − φ̄(T)| / |φ̄(T) − φ̄(0)|, is below 5%, and (b) the perturbations are frozen:
the median over networks of max_{k ≥ 2} |Δf̃_k| / |Δf̃_1|, the largest change of a perturbation
mode relative to the change of the mean mode, is below 5%.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import paper_common as pc

STEPS = 300
GRIDS: dict[str, dict[str, Any]] = {
    "smoke": dict(width=[64], depth=[1], activation=["erf"], sigma_w=[1.0], hubble_lengths=[2],
                  power=[2], optimiser=[(0.01, 0.0)], seed=[0], n=[8], steps=[50]),
    "quick": dict(width=[128, 512], depth=[1, 2], activation=["relu", "erf"],
                  sigma_w=[1.0, 1.41], hubble_lengths=[2], power=[2], optimiser=[(0.01, 0.0)],
                  seed=[0, 1], n=[32], steps=[STEPS]),
    "full": dict(width=[64, 128, 256, 512, 1024], depth=[1, 2], activation=["relu", "erf"],
                 sigma_w=[0.75, 1.0, 1.41], hubble_lengths=[1, 2, 4], power=[2, 4],
                 optimiser=[(0.01, 0.0), (0.001, 0.9)], seed=[0, 1], n=[32], steps=[STEPS]),
}
SHOWN_MODES = 5


def main(argv: Sequence[str] | None = None) -> int:
    args = pc.parse_args(__doc__, argv)
    configs = pc.grid(**GRIDS[args.mode])
    results = pc.run_scan(pc.input_dependent_run, configs, args.workers, "fig5 train")
    rows: list[dict[str, Any]] = []
    err_mean, ratio, discrepancy = [], [], []
    fig, (ax0, ax1) = pc.new_figure(2)
    for config, r in zip(configs, results, strict=True):
        row = {k: v for k, v in config.items() if k != "optimiser"}
        row |= {"lr": config["optimiser"][0], "momentum": config["optimiser"][1],
                "alpha_eff": r["alpha_eff"], "top_uniform_overlap": r["overlap_top"],
                "lambda1_over_lambda2": r["lambda"][0] / r["lambda"][1],
                "frozen_predicted_T8": r["frozen_predicted"], "compared": r["compared"]}
        if not r["compared"] or r["mean_mode"] != 0:
            rows.append(row | {"compared": False})
            continue
        mt, mp = r["mean_trained"], r["mean_top"]
        moved = abs(mt[-1] - mt[0])
        err_mean.append(abs(mp[-1] - mt[-1]) / moved)
        change = np.abs(r["modes_trained"][-1] - r["modes_trained"][0])
        ratio.append(change[1:].max() / change[0])
        discrepancy.append(np.abs(r["modes_pred"][-1] - r["modes_trained"][-1]))
        ax0.plot(mt - mt[0], mp - mt[0], lw=0.8, alpha=0.7)
        row |= {"mean_moved": moved, "mean_rel_error": err_mean[-1],
                "max_perturbation_change_over_mean_change": ratio[-1]}
        rows.append(row)
    err = np.array(err_mean)
    rat = np.array(ratio)
    disc = np.array(discrepancy)
    ok = len(err) > 0 and np.median(err) < 0.05 and np.median(rat) < 0.05

    lims = ax0.get_xlim()
    ax0.plot(lims, lims, "k--", lw=0.8, label="prediction = training")
    ax0.set(xlabel="trained φ̄(t) − φ̄(0)", ylabel="predicted φ̄(t) − φ̄(0) (α_eff = λ_1/N)",
            title="mean field: predicted vs trained, every step")
    ax0.legend(fontsize=7)
    shown = min(SHOWN_MODES, disc.shape[1])
    data = [np.log10(np.maximum(disc[:, k], 1e-16)) for k in range(shown)]
    ax1.violinplot(data, positions=range(1, shown + 1), showmedians=True)
    ax1.set(xlabel="mode k (1 = mean field)", ylabel="log10 |f̃_k pred − f̃_k trained| at T",
            title="end-of-training discrepancy per mode")

    med_disc = ", ".join(f"k={k + 1}: {np.median(disc[:, k]):.2g}" for k in range(shown))
    summary = [
        f"fig5: F5 reproduced: {pc.verdict(ok)} ({len(err)} networks compared, {args.mode} grid)",
        f"mean field vs homogeneous prediction (α_eff = λ_1/N): median relative end-point error "
        f"{np.median(err):.3g}, 90th percentile {np.quantile(err, 0.9):.3g}, max {err.max():.3g}"
        " (median < 0.05)",
        f"perturbations: median max_k≥2 |Δf̃_k|/|Δf̃_1| = {np.median(rat):.3g}, 90th percentile "
        f"{np.quantile(rat, 0.9):.3g} (median < 0.05: frozen)",
        f"median end-of-training mode discrepancy |pred − trained|: {med_disc}",
        f"not compared (no uniform top mode, or ηκ/2(1+β) > 0.5): {len(rows) - len(err)}"
        f" of {len(rows)}",
    ]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    pc.finish(args.out, "fig5", fig, [{k: r.get(k, "") for k in keys} for r in rows], summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
