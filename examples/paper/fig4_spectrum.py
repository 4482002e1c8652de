"""Figure 4: the top NTK eigenvalue of input-dependent networks, and the eigenvalue hierarchy (F4).

On N inputs the kernel's top mode is the mean field, with coupling α_eff = λ_1/N (docs/theory.md
T7); the other modes are perturbations with masses suppressed by λ_k/λ_1 (T8). The paper finds
λ_1 distributed like the α of homogeneous networks, and a large hierarchy λ_1 ≫ λ_2 ≫ … (F4).
For every network the script computes both: α = Θ(x0, x0) at the interval's centre x0 = 1,
and the spectrum on N equally spaced inputs of an interval whose length is a multiple of the
Hubble length 1/H = 0.3 (η = 0.01, β = 0; paper_common), plus the overlap of the top mode with
the uniform direction (T7 caveat: reported, never assumed).

* ``--quick``: width {64, 256} × depth {1, 2} × {relu, erf} × σ_w {0.5, 1.0, 1.41} ×
  interval {1, 2, 4} Hubble lengths × 2 seeds, N = 32: 144 kernels.
* ``--full``: width {64, 256, 1024} × depth {1, 2, 3} × {relu, erf} ×
  σ_w {0.5, 0.75, 1.0, 1.41} × interval {1, 2, 4, 8} × 3 seeds, N = 64: 864 kernels.

Why: the architecture axes are fig1's (so the two α distributions cover the same networks);
the interval grows until the kernel varies appreciably across it, where the uniform top mode
and the hierarchy weaken.

F4 is reproduced when the two-sample Kolmogorov–Smirnov distance between the distributions of
log λ_1/N and log α is below 0.2, and the median ratios λ_1/λ_2 ≥ 10 and λ_2/λ_3 ≥ 3.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import paper_common as pc
from scipy.stats import ks_2samp

from cosmo_optim import ntk_eigen

GRIDS: dict[str, dict[str, Any]] = {
    "smoke": dict(width=[32], depth=[1], activation=["relu", "erf"], sigma_w=[1.0],
                  hubble_lengths=[2], seed=[0], n=[8]),
    "quick": dict(width=[64, 256], depth=[1, 2], activation=["relu", "erf"],
                  sigma_w=[0.5, 1.0, 1.41], hubble_lengths=[1, 2, 4], seed=[0, 1], n=[32]),
    "full": dict(width=[64, 256, 1024], depth=[1, 2, 3], activation=["relu", "erf"],
                 sigma_w=[0.5, 0.75, 1.0, 1.41], hubble_lengths=[1, 2, 4, 8],
                 seed=[0, 1, 2], n=[64]),
}
K = 6


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """α at x0 and the top-K NTK eigenpairs on the interval, for one network."""
    model = pc.make_mlp(config)
    n = config["n"]
    eig = ntk_eigen(pc.kernel(model, pc.interval_inputs(n, config["hubble_lengths"])),
                    k=min(K, n))
    lam = eig.eigenvalues.numpy()
    lam = np.maximum(lam, 1e-15 * lam[0])  # round-off floor: a kernel of rank < K has λ ≈ 0
    overlap = float(abs(eig.eigenvectors[:, 0].sum()) / np.sqrt(n))
    return {**config, "alpha": pc.alpha_at(model), "alpha_eff": lam[0] / n,
            "top_uniform_overlap": overlap} | {f"lambda{k + 1}": v for k, v in enumerate(lam)}


def main(argv: Sequence[str] | None = None) -> int:
    args = pc.parse_args(__doc__, argv)
    axes = GRIDS[args.mode]
    rows = pc.run_scan(measure, pc.grid(**axes), args.workers, "fig4 NTK")
    alpha = np.log10([r["alpha"] for r in rows])
    top = np.log10([r["alpha_eff"] for r in rows])
    ks = float(ks_2samp(top, alpha).statistic)
    r12 = np.array([r["lambda1"] / r["lambda2"] for r in rows])
    r23 = np.array([r["lambda2"] / r["lambda3"] for r in rows])
    overlaps = np.array([r["top_uniform_overlap"] for r in rows])
    ok = ks < 0.2 and np.median(r12) >= 10 and np.median(r23) >= 3

    fig, (ax0, ax1) = pc.new_figure(2)
    bins = np.linspace(min(alpha.min(), top.min()), max(alpha.max(), top.max()), 25)
    ax0.hist(alpha, bins, alpha=0.6, label="α = Θ(x0, x0), homogeneous")
    ax0.hist(top, bins, histtype="step", lw=2, label="λ_1/N on the interval")
    ax0.set(xlabel="log10 α", ylabel="networks", title=f"F4: λ_1/N vs α (KS = {ks:.2f})")
    ax0.legend(fontsize=7)
    ks_axis = np.arange(1, K + 1)
    for length in axes["hubble_lengths"]:
        spectra = np.array([[r[f"lambda{k}"] / r["lambda1"] for k in ks_axis] for r in rows
                            if r["hubble_lengths"] == length and f"lambda{K}" in r])
        if len(spectra):
            ax1.plot(ks_axis, np.median(spectra, axis=0), marker="o",
                     label=f"interval {length}/H (median)")
            ax1.fill_between(ks_axis, *np.quantile(spectra, [0.1, 0.9], axis=0), alpha=0.2)
    ax1.set(yscale="log", xlabel="mode k", ylabel="λ_k / λ_1", title="eigenvalue hierarchy")
    ax1.legend(fontsize=7)

    by_length = ", ".join(
        f"{h}/H: λ1/λ2 {np.median(r12[[r['hubble_lengths'] == h for r in rows]]):.3g}"
        for h in axes["hubble_lengths"])
    summary = [
        f"fig4: F4 reproduced: {pc.verdict(ok)} ({len(rows)} networks, {args.mode} grid)",
        f"KS distance between log λ_1/N and log α: {ks:.3f} (< 0.2); median λ_1/(Nα) = "
        f"{np.median(10 ** (top - alpha)):.3f}, 90% within "
        f"{np.quantile(np.abs(top - alpha), 0.9):.3f} decades",
        f"hierarchy: median λ_1/λ_2 = {np.median(r12):.3g} (≥ 10), median λ_2/λ_3 = "
        f"{np.median(r23):.3g} (≥ 3); 10th percentile λ_1/λ_2 = {np.quantile(r12, 0.1):.3g}",
        f"per interval length: {by_length}",
        f"top mode's overlap with the uniform direction: median {np.median(overlaps):.3f}, "
        f"min {overlaps.min():.3f} (T7: the mean field when > 0.707)",
    ]
    pc.finish(args.out, "fig4", fig, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
