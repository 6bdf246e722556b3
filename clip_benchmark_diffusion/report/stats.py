"""How sure a report can be: 95% Wilson intervals of accuracies and exact McNemar tests of two
models on the same images (both from scipy's exact binomial test)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaNs when there is no observation): unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0% and 100%."""
    from scipy.stats import binomtest

    if n <= 0:
        return math.nan, math.nan
    interval = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def accuracy_with_interval(accuracy: float, n: int) -> str:
    """'91.7 [78.2–97.1]': an accuracy over `n` images and its 95% Wilson interval, in %."""
    low, high = wilson_interval(round(accuracy * n), n)
    return f"{100 * accuracy:.1f} [{100 * low:.1f}–{100 * high:.1f}]"


@dataclass(frozen=True)
class McNemar:
    """Paired comparison of two models' per-image correctness."""

    n: int
    only_a: int  # images only model A gets right
    only_b: int  # images only model B gets right
    p_value: float  # exact two-sided McNemar test (binomial test of the discordant pairs at 1/2)

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - CONFIDENCE


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """Exact McNemar test; both sequences must list the same images in the same order."""
    from scipy.stats import binomtest

    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired test needs the same images: {len(correct_a)} vs {len(correct_b)}")
    only_a = sum(bool(a) and not bool(b) for a, b in zip(correct_a, correct_b))
    only_b = sum(bool(b) and not bool(a) for a, b in zip(correct_a, correct_b))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(len(correct_a), only_a, only_b, p_value)
