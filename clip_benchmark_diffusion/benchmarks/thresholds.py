"""What the guarantee costs per comparison: the guaranteed rule's per-test threshold against Clark & Jaini's.

    python -m clip_benchmark_diffusion.benchmarks.thresholds

For K classes and L looks, the guaranteed rule tests each pair at level delta / ((K - 1) L)
(Bonferroni over the comparators and the looks). Clark & Jaini test each pair at p < 2e-3, with no
correction. The draws a class needs before it can be dropped grow with the square of the threshold
(in standard errors of the pair's difference), so (ours / theirs)^2 is the price per hard
comparison. The Dunnett column is the smallest threshold any rule could use that still covers every
comparator of the winner at once: the K - 1 differences to the winner share its noise (correlation
1/2 for equal variances), and the exact maximum-of-correlated-normals quantile replaces Bonferroni's
sum. It is within a few percent of Bonferroni's, so the correlation cannot buy the cost back. The
"exact over looks" column does the same for the L looks: a pair's standardized bound at n of the N
draws (sampled without replacement) is W(t)/sqrt(t) at t = n / (N - n) for a Brownian motion W, so
successive looks are correlated, and the exact chance that any look crosses (by recursive
integration over the looks) replaces the sum over looks. Normal quantiles (the large-sample limit
of the t quantiles the rule uses).
"""
from __future__ import annotations

import argparse
import math
from typing import Optional

import numpy as np
from scipy import integrate, optimize, stats

from ..strategies import look_schedule

CLARK_JAINI_P = 2e-3


def max_exceedance(threshold: float, comparators: int, correlation: float = 0.5) -> float:
    """P(max of `comparators` equicorrelated standard normals > threshold)."""
    shared, own = math.sqrt(correlation), math.sqrt(1 - correlation)

    def density(u: float) -> float:
        return stats.norm.pdf(u) * -math.expm1(comparators * stats.norm.logcdf((threshold - shared * u) / own))

    return integrate.quad(density, -12, 12, limit=400)[0]


def crossing_probability(threshold: float, times: list[float], points: int = 401, width: float = 10.0) -> float:
    """P(W(t) / sqrt(t) > threshold at some t of `times`) for a standard Brownian motion W: the
    density of W below the boundary is carried from look to look on a grid (`points` per look)."""
    crossed, previous, grid, density = 0.0, 0.0, None, None
    for t in times:
        boundary = threshold * math.sqrt(t)
        new_grid = np.linspace(-width * math.sqrt(t), boundary, points)
        if grid is None:
            crossed = float(stats.norm.sf(threshold))
            density = stats.norm.pdf(new_grid, scale=math.sqrt(t)) * (new_grid[1] - new_grid[0])
        else:
            step = math.sqrt(t - previous)
            crossed += float(density @ stats.norm.sf((boundary - grid) / step))
            moved = stats.norm.pdf((new_grid[:, None] - grid[None, :]) / step) / step
            density = moved @ density * (new_grid[1] - new_grid[0])
        grid, previous = new_grid, t
    return crossed


def thresholds(classes: int, look_draws: list[int], delta: float = 0.01) -> dict[str, float]:
    """Per-test thresholds (standard errors) for the comparisons of `classes` classes at looks after
    `look_draws` draws (the last is the full budget N)."""
    full = look_draws[-1]
    level = delta / len(look_draws)
    bonferroni = float(stats.norm.isf(level / (classes - 1)))
    dunnett = optimize.brentq(lambda c: max_exceedance(c, classes - 1) - level, 0.5, bonferroni + 1.0)
    times = [n / (full - n) for n in look_draws if n < full]  # the last look is exact: it never errs
    over_looks = optimize.brentq(lambda c: crossing_probability(c, times) - delta / (classes - 1), 0.5, bonferroni,
                                 xtol=1e-3)
    return {"bonferroni": bonferroni, "dunnett": dunnett, "over_looks": over_looks,
            "clark_jaini": float(stats.norm.isf(CLARK_JAINI_P))}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 37, 100, 1000])
    parser.add_argument("--delta", type=float, default=0.01)
    parser.add_argument("--min_draws", type=int, default=8)
    parser.add_argument("--look_growth", type=float, default=1.25)
    parser.add_argument("--draws", type=int, default=1024)
    options = parser.parse_args(argv)
    looks = look_schedule(options.min_draws, options.look_growth, options.draws)
    print(f"delta {options.delta}, {len(looks)} looks ({options.min_draws} -> {options.draws} draws, "
          f"x{options.look_growth})\n")
    print("| classes | guaranteed (Bonferroni) | Dunnett (exact max) | exact over looks | Clark & Jaini | draws per hard "
          "comparison vs theirs: Bonferroni / Dunnett / exact over looks |\n|---|---|---|---|---|---|")
    for classes in options.classes:
        row = thresholds(classes, looks, options.delta)
        theirs = row["clark_jaini"]
        ratios = " / ".join(f"{(row[key] / theirs) ** 2:.2f}x" for key in ("bonferroni", "dunnett", "over_looks"))
        print(f"| {classes} | {row['bonferroni']:.2f} | {row['dunnett']:.2f} | {row['over_looks']:.2f} | {theirs:.2f} | "
              f"{ratios} |", flush=True)


if __name__ == "__main__":
    main()
