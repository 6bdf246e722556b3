"""What the guarantee costs per comparison: the guaranteed rule's per-test threshold against Clark & Jaini's.

    python -m clip_benchmark_diffusion.benchmarks.thresholds

For K classes and L looks, the guaranteed rule tests each pair at level delta / ((K - 1) L)
(Bonferroni over the comparators and the looks). Clark & Jaini test each pair at p < 2e-3, with no
correction. The draws a class needs before it can be dropped grow with the square of the threshold
(in standard errors of the pair's difference), so (ours / theirs)^2 is the price per hard
comparison. The Dunnett column is the smallest threshold any rule could use that still covers every
comparator of the winner at once: the K - 1 differences to the winner share its noise (correlation
1/2 for equal variances), and the exact maximum-of-correlated-normals quantile replaces Bonferroni's
sum. It is within a few percent of Bonferroni's, so the correlation cannot buy the cost back. Normal
quantiles (the large-sample limit of the t quantiles the rule uses).
"""
from __future__ import annotations

import argparse
import math
from typing import Optional

from scipy import integrate, optimize, stats

from ..strategies import look_schedule

CLARK_JAINI_P = 2e-3


def max_exceedance(threshold: float, comparators: int, correlation: float = 0.5) -> float:
    """P(max of `comparators` equicorrelated standard normals > threshold)."""
    shared, own = math.sqrt(correlation), math.sqrt(1 - correlation)

    def density(u: float) -> float:
        return stats.norm.pdf(u) * -math.expm1(comparators * stats.norm.logcdf((threshold - shared * u) / own))

    return integrate.quad(density, -12, 12, limit=400)[0]


def thresholds(classes: int, looks: int, delta: float = 0.01) -> dict[str, float]:
    """Per-test thresholds (standard errors) for one look's comparisons of `classes` classes."""
    level = delta / looks
    bonferroni = float(stats.norm.isf(level / (classes - 1)))
    dunnett = optimize.brentq(lambda c: max_exceedance(c, classes - 1) - level, 0.5, bonferroni + 1.0)
    return {"bonferroni": bonferroni, "dunnett": dunnett, "clark_jaini": float(stats.norm.isf(CLARK_JAINI_P))}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 37, 100, 1000])
    parser.add_argument("--delta", type=float, default=0.01)
    parser.add_argument("--min_draws", type=int, default=8)
    parser.add_argument("--look_growth", type=float, default=1.25)
    parser.add_argument("--draws", type=int, default=1024)
    options = parser.parse_args(argv)
    looks = len(look_schedule(options.min_draws, options.look_growth, options.draws))
    print(f"delta {options.delta}, {looks} looks ({options.min_draws} -> {options.draws} draws, x{options.look_growth})\n")
    print("| classes | guaranteed (Bonferroni) | Dunnett (exact max) | Clark & Jaini | draws per hard comparison vs "
          "theirs: Bonferroni / Dunnett |\n|---|---|---|---|---|")
    for classes in options.classes:
        row = thresholds(classes, looks, options.delta)
        theirs = row["clark_jaini"]
        print(f"| {classes} | {row['bonferroni']:.2f} | {row['dunnett']:.2f} | {theirs:.2f} | "
              f"{(row['bonferroni'] / theirs) ** 2:.2f}x / {(row['dunnett'] / theirs) ** 2:.2f}x |")


if __name__ == "__main__":
    main()
