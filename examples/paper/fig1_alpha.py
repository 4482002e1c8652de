"""Figure 1: the homogeneous kernel α = Θ(x0, x0) across architecture and initialisation (F1).

A network evaluated at one input x0 is a homogeneous field; its equation of motion is
φ̈ + 3Hφ̇ + α ℓ'(φ) = 0 with α its empirical NTK at x0 (docs/theory.md T5). The paper finds that α
depends most on the initialisation standard deviation, then on the activation (erf above
relu) and the depth, and little on the width (F1).

Grid (NTK parameterisation, σ_b = 0.1, x0 = 1; see paper_common):

* ``--quick``: width {64, 256, 1024} × depth {1, 2, 3} × activation {relu, erf} ×
  σ_w {0.5, 0.75, 1.0, 1.41} × 3 seeds = 216 networks (a few seconds).
* ``--full``: width {32, …, 2048} (7) × depth {1, 2, 3, 4} × {relu, erf} ×
  σ_w {0.25, 0.5, 0.75, 1.0, 1.25, 1.41, 2.0} × 10 seeds = 3920 networks.

Why: σ_w spans the usual initialisations up to relu's critical value sqrt(2) (He
initialisation), where relu kernels stop shrinking with depth; the full grid also probes
σ_w = 2, the chaotic phase, where relu kernels explode with depth and erf saturates, so the
activation ordering can flip there (the summary reports it per σ_w). Widths span a factor
16–64 because in the NTK parameterisation the width only changes finite-width fluctuations.

Effect size of a factor: the share of the variance of log α explained by its levels (η², the
between-level variance of the group means over the total variance). F1 is reproduced when σ_w
has the largest share, the width the smallest, and erf has the larger geometric-mean α.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import paper_common as pc

GRIDS: dict[str, dict[str, Any]] = {
    "smoke": dict(width=[16, 32], depth=[1, 2], activation=["relu", "erf"],
                  sigma_w=[0.5, 1.0], seed=[0]),
    "quick": dict(width=[64, 256, 1024], depth=[1, 2, 3], activation=["relu", "erf"],
                  sigma_w=[0.5, 0.75, 1.0, 1.41], seed=[0, 1, 2]),
    "full": dict(width=[32, 64, 128, 256, 512, 1024, 2048], depth=[1, 2, 3, 4],
                 activation=["relu", "erf"], sigma_w=[0.25, 0.5, 0.75, 1.0, 1.25, 1.41, 2.0],
                 seed=list(range(10))),
}
FACTORS = ("sigma_w", "activation", "depth", "width")


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """α of one freshly initialised network."""
    return {**config, "alpha": pc.alpha_at(pc.make_mlp(config))}


def effect_sizes(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """η² of log α for each factor: between-level variance of the means / total variance."""
    log_a = np.log10([r["alpha"] for r in rows])
    total = float(log_a.var())
    sizes = {}
    for factor in FACTORS:
        levels = np.array([r[factor] for r in rows])
        between = sum((levels == v).mean() * (log_a[levels == v].mean() - log_a.mean()) ** 2
                      for v in np.unique(levels))
        sizes[factor] = float(between) / total
    return sizes


def geo_mean(rows: Sequence[dict[str, Any]], **match: Any) -> float:
    vals = [r["alpha"] for r in rows if all(r[k] == v for k, v in match.items())]
    return float(10 ** np.mean(np.log10(vals)))


def main(argv: Sequence[str] | None = None) -> int:
    args = pc.parse_args(__doc__, argv)
    axes = GRIDS[args.mode]
    rows = pc.run_scan(measure, pc.grid(**axes), args.workers, "fig1 α")
    sizes = effect_sizes(rows)
    ranking = sorted(FACTORS, key=sizes.__getitem__, reverse=True)
    erf, relu = geo_mean(rows, activation="erf"), geo_mean(rows, activation="relu")
    ok = ranking[0] == "sigma_w" and ranking[-1] == "width" and erf > relu

    fig, (ax0, ax1) = pc.new_figure(2)
    for act, style in (("relu", "-"), ("erf", "--")):
        for depth in axes["depth"]:
            ys = [geo_mean(rows, activation=act, depth=depth, sigma_w=s) for s in axes["sigma_w"]]
            ax0.plot(axes["sigma_w"], ys, style, marker="o", label=f"{act}, {depth} hidden")
    ax0.set(yscale="log", xlabel="initialisation std σ_w", ylabel="α = Θ(x0, x0)",
            title="α (geometric mean over widths, seeds)")
    ax0.legend(fontsize=7)
    ax1.bar(ranking, [sizes[f] for f in ranking], color="tab:blue")
    ax1.set(yscale="log", ylabel="share of var(log α) explained (η²)", title="effect sizes")

    ratios = {s: geo_mean(rows, activation="erf", sigma_w=s)
              / geo_mean(rows, activation="relu", sigma_w=s) for s in axes["sigma_w"]}
    per_sigma = ", ".join(f"σ_w={s}: {v:.2f}" for s, v in ratios.items())
    summary = [
        f"fig1: F1 reproduced: {pc.verdict(ok)} ({len(rows)} networks, {args.mode} grid)",
        "effect sizes (η² of log10 α): " + ", ".join(f"{f} {sizes[f]:.3f}" for f in ranking),
        f"ranking: {' > '.join(ranking)} (paper: initialisation std first, width last)",
        f"geometric-mean α: erf {erf:.3g}, relu {relu:.3g} (paper: erf > relu)",
        f"erf/relu α ratio per σ_w: {per_sigma}",
        f"α range: {min(r['alpha'] for r in rows):.3g} – {max(r['alpha'] for r in rows):.3g}",
    ]
    pc.finish(args.out, "fig1", fig, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
