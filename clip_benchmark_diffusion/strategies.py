"""Where UNet calls go: which candidates get how many more shared draws, round by round.

A strategy sees one image's state (per-draw errors of every candidate so far) and answers
"these candidates, up to this many draws" or "done". All candidates evaluated in a round
share the same draw indices, so every comparison between survivors is paired.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from scipy import stats

from .settings import ScorerSettings


@dataclass
class ImageState:
    """Per-image bookkeeping shared by the scorer and the strategies."""

    num_candidates: int
    max_draws: int
    per_draw: torch.Tensor = field(init=False)  # (candidates, max_draws) float64, NaN = not evaluated
    draws_done: int = 0
    active: torch.Tensor = field(init=False)  # bool (candidates,)
    dropped_round: list = field(init=False)  # round index at which each candidate was dropped (None = kept)
    dropped_estimate: list = field(init=False)  # its mean error then
    survivors_per_round: list = field(default_factory=list)
    round: int = 0
    #: the decision was made under `max_calls`: the strategy wanted more draws than the cap allowed
    capped: bool = False
    #: candidates open at the guaranteed rule's first look (its multiplicity correction)
    tested_candidates: Optional[int] = None
    #: the guaranteed rule showed no open candidate can beat the leader clearly: the leader is the answer
    tied: bool = False

    def __post_init__(self) -> None:
        self.per_draw = torch.full((self.num_candidates, self.max_draws), float("nan"), dtype=torch.float64)
        self.active = torch.ones(self.num_candidates, dtype=torch.bool)
        self.dropped_round = [None] * self.num_candidates
        self.dropped_estimate = [None] * self.num_candidates

    def advance(self, target: int) -> None:
        """A round brought the open candidates to `target` draws (their errors are in `per_draw`)."""
        self.draws_done, self.round = target, self.round + 1

    def means(self) -> torch.Tensor:
        """Mean error of each candidate over the draws it received."""
        return torch.nanmean(self.per_draw[:, : max(self.draws_done, 1)], dim=1)

    def restrict(self, shortlist: list[int]) -> None:
        """Before any draw: only `shortlist` stays active (a pre-filter's choice)."""
        keep = torch.zeros_like(self.active)
        keep[torch.as_tensor(shortlist, dtype=torch.long)] = True
        self.drop(torch.nonzero(~keep).flatten())

    def drop(self, candidates: torch.Tensor) -> None:
        means = self.means()
        for c in candidates.tolist():
            if self.active[c]:
                self.active[c] = False
                self.dropped_round[c] = self.round
                self.dropped_estimate[c] = float(means[c])


def _best_active(state: ImageState) -> tuple[int, torch.Tensor]:
    active = torch.nonzero(state.active).flatten()
    means = state.means()[active]
    return int(active[torch.argmin(means)]), active


class Strategy:
    """Base class: `next_round` returns the number of draws every active candidate should
    have after this round, or None when the decision is made. `after_round` may drop."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings

    def max_draws(self) -> int:
        return self.settings.draws

    def next_round(self, state: ImageState) -> Optional[int]:
        raise NotImplementedError

    def after_round(self, state: ImageState) -> None:
        pass

    def finish_round(self, state: ImageState) -> None:
        """After a round's errors are in: drop by the strategy's rule and note the survivors (the
        scorer and `replay` close rounds alike)."""
        self.after_round(state)
        state.survivors_per_round.append(int(state.active.sum()))


class FixedBudget(Strategy):
    """Every candidate gets `draws` draws in one round (the baseline of both papers)."""

    def next_round(self, state: ImageState) -> Optional[int]:
        return self.settings.draws if state.draws_done < self.settings.draws else None


class TTestElimination(Strategy):
    """Clark & Jaini's Algorithm 1: after `min_draws`, add `round_draws` shared draws per
    round and drop every candidate whose one-sided paired t-test against the current best
    has p < `ttest_p`; stop at one survivor or at `draws` draws. The variance of a difference
    is the pair's own (`ttest_variance="paired"`) or pooled over all open candidates."""

    def next_round(self, state: ImageState) -> Optional[int]:
        if int(state.active.sum()) <= 1 or state.draws_done >= self.settings.draws:
            return None
        if state.draws_done == 0:
            return min(self.settings.min_draws, self.settings.draws)
        return min(state.draws_done + self.settings.round_draws, self.settings.draws)

    def after_round(self, state: ImageState) -> None:
        best, active = _best_active(state)
        n = state.draws_done
        others = active[active != best]
        if n < 2 or len(others) == 0:
            return
        differences = state.per_draw[others, :n] - state.per_draw[best, :n]  # > 0: worse than best
        mean = differences.mean(dim=1)
        if self.settings.ttest_variance == "pooled":
            standard_error, df = _pooled_standard_error(state.per_draw[active, :n])
        else:
            standard_error, df = differences.std(dim=1, unbiased=True) / n ** 0.5, n - 1
        p_values = torch.from_numpy(stats.t.sf((mean / standard_error).numpy(), df=df))
        # identical candidates (std 0, mean 0) give NaN: never drop on them
        drop = others[(p_values < self.settings.ttest_p) & torch.isfinite(p_values)]
        state.drop(drop)


def look_schedule(first: int, growth: float, most: int) -> list[int]:
    """Draw counts at which `GuaranteedElimination` tests: `first`, then x`growth` each look
    (at least one draw more), ending at `most`. Few looks (geometric) keep the multiplicity
    correction over looks small."""
    looks, n = [], max(min(first, most), 1)
    while n < most:
        looks.append(n)
        n = max(n + 1, math.ceil(n * growth))
    return looks + [most]


class GuaranteedElimination(Strategy):
    """Successive elimination whose answer equals the full budget's with probability >= 1 - delta.

    The full budget is every candidate given all `draws` shared draws; its answer w is the lowest
    mean over those draws. At each look (draw counts from `look_schedule`), every open candidate k
    is compared with the current leader b on their paired differences d = e_k - e_b and dropped
    when the lower confidence bound of the *full-budget* mean difference is above 0:

        mean(d) - q * sd(d) / sqrt(n) * sqrt((N - n) / (N - 1)) > 0,

    with q the Student-t quantile at level delta / ((K - 1) * L) (K candidates open at the first
    look, L looks) and n - 1 degrees of freedom. Why it holds: w is dropped only if a bound on a
    pair (w, b) misses, and w's full-budget difference to every b is <= 0; a union bound over the
    K - 1 possible leaders (the leader is the luckiest candidate, a data-dependent choice, so every
    pair is covered) and the L looks gives probability <= delta. The first n of the N draws are a
    sample of them without replacement (draws are exchangeable; the stratified sampler's prefixes
    are more even than random ones), hence the finite-population factor, which makes the last look
    (n = N) exact. Each pair uses its own variance (no pooling across candidates), so heavy tails
    and timestep-dependent variance only enter through the t statistic's normal approximation.

    A second stop, from the same bounds: the image is decided for the leader b when no open k can
    be a *clear* full-budget winner over it, i.e. when every k's bound says it is not ahead of b by
    3 full-budget standard errors: `mean - q * sd / sqrt(n) * fpc > -3 * sd_k / sqrt(N)`. sd_k is
    the smallest paired spread of k with any other candidate (the runner-up is one of them), taken
    at its lower confidence bound, so the margin stays below k's real clear gap. If the image is
    clear, its winner w is open and cannot pass this test against another leader; so the stop
    returns w, or on an unclear image a candidate within 3 standard errors of w.
    """

    def __init__(self, settings: ScorerSettings) -> None:
        super().__init__(settings)
        self.looks = look_schedule(settings.min_draws, settings.look_growth, settings.draws)

    def max_draws(self) -> int:
        return self.settings.draws

    def next_round(self, state: ImageState) -> Optional[int]:
        if int(state.active.sum()) <= 1 or state.draws_done >= self.settings.draws or state.tied:
            return None
        return next((n for n in self.looks if n > state.draws_done), None)

    def after_round(self, state: ImageState) -> None:
        n, total = state.draws_done, self.settings.draws
        if state.tested_candidates is None:  # the multiplicity is fixed at the first look
            state.tested_candidates = int(state.active.sum())
        best, active = _best_active(state)
        others = active[active != best]
        if len(others) == 0 or n < 2:
            return
        differences = state.per_draw[others, :n] - state.per_draw[best, :n]
        mean = differences.mean(dim=1)
        spread = differences.std(dim=1, unbiased=True)
        q = float(stats.t.isf(self.test_level(state), df=n - 1))
        finite_population = math.sqrt((total - n) / (total - 1)) if total > 1 else 0.0
        margin = q * spread / math.sqrt(n) * finite_population
        lower = mean - margin  # bound on each full-budget difference to the leader
        drop = lower > 0
        state.drop(others[drop])
        kept = ~drop
        if n < total and bool(kept.any()):
            state.tied = self._no_clear_winner_over_leader(state, others[kept], lower[kept], spread[kept])

    def test_level(self, state: ImageState) -> float:
        """Level of each pair's test at each look: delta shared by the K - 1 comparators and the L
        looks (Bonferroni), which is what the guarantee costs (`benchmarks.multiplicity` prices it)."""
        return self.settings.delta / (max(state.tested_candidates - 1, 1) * len(self.looks))

    def _no_clear_winner_over_leader(self, state: ImageState, candidates: torch.Tensor, lower: torch.Tensor,
                                     spread_to_leader: torch.Tensor) -> bool:
        """True when no open candidate's bound leaves room for it to beat the leader clearly (by
        3 full-budget standard errors of its pair with the runner-up, whoever that is)."""
        root_total = math.sqrt(self.settings.draws)
        if not bool((lower > -3.0 * spread_to_leader / root_total).all()):  # cheap necessary check
            return False
        n = state.draws_done
        smallest = smallest_paired_spread(state.per_draw, candidates, n)
        shrink = math.sqrt((n - 1) / float(stats.chi2.isf(self.settings.delta, n - 1)))
        return bool((lower > -3.0 * smallest * shrink / root_total).all())


def smallest_paired_spread(per_draw: torch.Tensor, candidates: torch.Tensor, most: int) -> torch.Tensor:
    """For each of `candidates`: the smallest standard deviation of its paired differences with
    any other candidate, over their common evaluated draws (at most `most`). A dropped candidate
    counts with the draws it got; one with fewer than two draws does not count."""
    evaluated = torch.clamp((~torch.isnan(per_draw)).sum(dim=1), max=most)
    smallest = torch.full((len(candidates),), float("inf"), dtype=per_draw.dtype)
    for length in sorted(set(evaluated.tolist())):
        if length < 2:
            continue
        others = torch.nonzero(evaluated == length).flatten()
        chunk = max(1, _PAIRS_PER_CHUNK // (len(others) * length))  # bounded memory with thousands of classes
        for start in range(0, len(candidates), chunk):
            rows = candidates[start:start + chunk]
            spread = (per_draw[rows, None, :length] - per_draw[None, others, :length]).std(dim=2, unbiased=True)
            spread[rows[:, None] == others[None, :]] = float("inf")
            smallest[start:start + chunk] = torch.minimum(smallest[start:start + chunk], spread.min(dim=1).values)
    return smallest


_PAIRS_PER_CHUNK = 1 << 22  # paired differences held at once by `smallest_paired_spread` (32 MB)


def _pooled_standard_error(errors: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Standard error of a difference of two candidates' means, and its degrees of freedom,
    from the residual variance of the two-way (candidate x draw) layout: a draw's (t, noise)
    moves every candidate's error alike, so that shared part is removed as in a paired test,
    and what is left is pooled over all open candidates."""
    k, n = errors.shape
    residual = errors - errors.mean(dim=1, keepdim=True) - errors.mean(dim=0, keepdim=True) + errors.mean()
    df = (k - 1) * (n - 1)
    variance = (residual ** 2).sum() / df
    return (2 * variance / n).sqrt().expand(k - 1), df


class MultiStageSchedule(Strategy):
    """Li et al.'s adaptive evaluation: stage i brings the kept candidates up to
    `schedule_draws[i]` cumulative draws, then keeps the best `schedule_keep[i]`.
    Later stages extend the same draw sequence, so earlier errors are reused."""

    def max_draws(self) -> int:
        return self.settings.schedule_draws[-1]

    def next_round(self, state: ImageState) -> Optional[int]:
        if state.round >= len(self.settings.schedule_draws):
            return None
        return self.settings.schedule_draws[state.round]

    def after_round(self, state: ImageState) -> None:
        keep = self.settings.schedule_keep[state.round - 1]
        active = torch.nonzero(state.active).flatten()
        if len(active) <= keep:
            return
        order = torch.argsort(state.means()[active], stable=True)
        state.drop(active[order[keep:]])


STRATEGIES = {"fixed": FixedBudget, "ttest": TTestElimination, "schedule": MultiStageSchedule,
              "guaranteed": GuaranteedElimination}


@dataclass(frozen=True)
class CallBounds:
    """Network evaluations one image can cost: `expected` is None where it depends on the image
    (the t-test stops when the evidence is in)."""

    fewest: int
    most: int
    expected: Optional[int]


def call_bounds(settings: ScorerSettings, candidates: int, rows_per_candidate: int) -> CallBounds:
    """What a strategy can spend on one image with `candidates` open (after any pre-filter), each
    costing `rows_per_candidate` network rows per draw (templates x calls per prediction)."""
    per_draw = candidates * rows_per_candidate
    if settings.strategy == "fixed":
        fewest = most = expected = per_draw * settings.draws
    elif settings.strategy in ("ttest", "guaranteed"):
        most = per_draw * settings.draws
        fewest = 0 if candidates <= 1 else per_draw * min(settings.min_draws, settings.draws)
        expected = None
    else:
        spent, open_candidates, done = 0, candidates, 0
        for keep, draws in zip(settings.schedule_keep, settings.schedule_draws):
            spent += open_candidates * rows_per_candidate * (draws - done)
            open_candidates, done = min(open_candidates, keep), draws
        fewest = most = expected = spent
    if settings.max_calls:
        fewest, most = min(fewest, settings.max_calls), min(most, settings.max_calls)
        expected = None if expected is None else min(expected, settings.max_calls)
    return CallBounds(fewest, most, expected)


def within_cap(state: ImageState, target: Optional[int], calls_per_draw: int, calls: int,
               max_calls: int) -> Optional[int]:
    """The strategy's next draw target cut to what `max_calls` still pays for (None: decide now),
    `calls_per_draw` being what one more draw of the open candidates costs. Marks the image as
    decided under the cap when the cap cut anything. Shared by the scorer and `replay`."""
    if target is None or not max_calls:
        return target
    affordable = (max_calls - calls) // calls_per_draw
    if state.draws_done + affordable < target:
        state.capped = True
        target = state.draws_done + affordable
    return target if target > state.draws_done else None


def make_strategy(settings: ScorerSettings) -> Strategy:
    return STRATEGIES[settings.strategy](settings)
