"""Stress suite: do the adaptive strategies give the full budget's answer, and at what cost?

    python -m clip_benchmark_diffusion.benchmarks.stress --images 100
    python -m clip_benchmark_diffusion.benchmarks.stress --regimes 1000_hard_heavy --images 300

Synthetic per-draw error tables whose full-budget answer is known: for image i, candidate k and
draw j,

    e[k, j] = a[j] + mu[k] + sigma(u[j]) * s[k] * r[k, j]

a[j]: an effect of the draw shared by every candidate (large: a draw's timestep and noise move
every error alike); mu[k]: the candidate's mean (the true class 0 has mu = 0); s[k]: a scale per
candidate (heteroscedastic, lognormal); sigma(u): a residual scale that depends on the draw's
unit time u (optional); r: unit-variance Gaussian or Student-t(3) residuals. u follows the
scorer's own stratified timestep sequence (a per-image shift of a van der Corput sequence), so the
draws arrive in the order a run sees them. Easy images: every wrong class is worse by
3 + Exp(mean 6) residual standard deviations. Hard images: by 0.3 * (2 + N(0, 1)), so some
wrong classes are truly better than the true one (the model is wrong, not the Monte Carlo).
Near-synonyms: a few classes within 0.3 * N(0, 0.5) of the true one.

The full budget gives every candidate every one of `--draws` draws; its answer is "clear" when
the winner beats the runner-up by more than 3 standard errors of their paired difference. Every
strategy is replayed (`replay.replay`) on the same tables.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..draws import van_der_corput
from ..replay import replay
from ..settings import ScorerSettings
from ..strategies import Strategy, make_strategy


@dataclass(frozen=True)
class Regime:
    name: str
    candidates: int
    hard_share: float  # share of hard images (1.0: hard only)
    heavy_tails: bool = False  # Student-t(3) residuals instead of Gaussian
    timestep_variance: bool = False  # residual scale grows with the draw's unit time
    synonyms: int = 0  # wrong classes nearly tied with the true one
    shared_scale: float = 10.0  # size of the draw effect shared by all candidates


REGIMES = {r.name: r for r in [
    Regime("10_mixed", 10, 0.5),
    Regime("10_hard", 10, 1.0),
    Regime("37_heavy", 37, 0.5, heavy_tails=True),
    Regime("100_mixed", 100, 0.5),
    Regime("100_synonyms", 100, 0.5, synonyms=3),
    Regime("1000_mixed", 1000, 0.5),
    Regime("1000_hard_heavy", 1000, 1.0, heavy_tails=True, timestep_variance=True, synonyms=3),
    Regime("100_shared_heavy", 100, 0.5, heavy_tails=True, timestep_variance=True, shared_scale=100.0),
]}


def error_table(regime: Regime, image: int, draws: int, seed: int = 0) -> np.ndarray:
    """(candidates, draws) per-draw errors of one synthetic image; class 0 is the true class."""
    return synthetic_image(regime, image, draws, seed)[0]


def synthetic_image(regime: Regime, image: int, draws: int, seed: int = 0) -> tuple[np.ndarray, bool]:
    """`error_table`'s table, and whether the image is a hard one."""
    rng = np.random.default_rng([seed, image, regime.candidates, int(regime.hard_share * 100)])
    k = regime.candidates
    u = np.remainder(van_der_corput(torch.arange(draws)).numpy() + rng.random(), 1.0)
    hard = bool(rng.random() < regime.hard_share)
    mu = 0.3 * (2.0 + rng.standard_normal(k)) if hard else 3.0 + rng.exponential(6.0, k)
    mu[0] = 0.0
    if regime.synonyms:
        mu[1:1 + regime.synonyms] = 0.3 * 0.5 * rng.standard_normal(regime.synonyms)
    scale = np.exp(0.25 * rng.standard_normal(k))[:, None]
    if regime.heavy_tails:
        residual = rng.standard_t(3, size=(k, draws)) / math.sqrt(3.0)
    else:
        residual = rng.standard_normal((k, draws))
    sigma = (0.2 + 1.6 * u ** 2) / math.sqrt(0.765) if regime.timestep_variance else np.ones(draws)
    shared = regime.shared_scale * (0.5 + u) * rng.standard_normal(draws)
    return shared[None, :] + mu[:, None] + sigma[None, :] * scale * residual, hard


def full_budget(table: np.ndarray) -> tuple[int, bool]:
    """The full budget's answer and whether it is clear (winner ahead of the runner-up by more than
    3 standard errors of their paired difference)."""
    means = table.mean(axis=1)
    order = np.argsort(means, kind="stable")
    winner, runner_up = int(order[0]), int(order[1])
    difference = table[runner_up] - table[winner]
    standard_error = difference.std(ddof=1) / math.sqrt(table.shape[1])
    return winner, bool(difference.mean() > 3 * standard_error)


CLARK_JAINI = "Clark & Jaini t-test"
LI_KEEP_LISTS = {10: "5@50,1@500", 37: "5@25,1@250", 100: "20@20,10@50,5@100,1@500",
                 1000: "500@50,50@100,10@500,1@1000"}


def strategies(candidates: int, draws: int) -> dict[str, ScorerSettings]:
    """The strategies compared: the default (guaranteed), Clark & Jaini's t-test, the previous
    default (pooled t-test, 64 draws) and Li et al.'s keep-list for this many classes."""
    rows = {
        "guaranteed (default)": ScorerSettings(draws=draws),
        CLARK_JAINI: ScorerSettings(strategy="ttest", draws=draws, ttest_p=2e-3, min_draws=20, round_draws=4,
                                    ttest_variance="paired"),
        "old default (pooled t-test, 64)": ScorerSettings(strategy="ttest", draws=64, ttest_p=0.02, min_draws=2,
                                                          round_draws=1, ttest_variance="pooled"),
    }
    keep_list = LI_KEEP_LISTS.get(candidates)
    if keep_list and int(keep_list.split("@")[-1]) <= draws:
        stages = [part.split("@") for part in keep_list.split(",")]
        rows[f"Li et al. {keep_list}"] = ScorerSettings(
            strategy="schedule", schedule_keep=tuple(min(int(k), candidates) for k, _ in stages),
            schedule_draws=tuple(int(d) for _, d in stages))
    return rows


@dataclass
class Tally:
    images: int = 0
    agree: int = 0
    clear: int = 0
    agree_clear: int = 0
    correct: int = 0
    correct_full: int = 0
    calls: float = 0.0
    hard: int = 0
    calls_hard: float = 0.0

    def row(self) -> dict:
        n = max(self.images, 1)
        return {"images": self.images, "agreement": self.agree / n, "clear": self.clear,
                "agreement_clear": self.agree_clear / max(self.clear, 1), "disagree_clear": self.clear - self.agree_clear,
                "accuracy": self.correct / n, "accuracy_full": self.correct_full / n, "calls": self.calls / n,
                "calls_easy": (self.calls - self.calls_hard) / max(self.images - self.hard, 1),
                "calls_hard": self.calls_hard / max(self.hard, 1)}


def run_regime(regime: Regime, images: int, draws: int = 1024, seed: int = 0,
               configurations: Optional[dict[str, Union[ScorerSettings, Strategy]]] = None,
               progress: Optional[Callable[[int], None]] = None) -> dict[str, dict]:
    """Per strategy: agreement with the full budget (all images, clear ones), accuracy of both,
    mean calls per image. A configuration is settings (their strategy) or a strategy object (a
    variant outside the registry, replayed under its own settings)."""
    configurations = configurations or strategies(regime.candidates, draws)
    rules = {name: c if isinstance(c, Strategy) else make_strategy(c) for name, c in configurations.items()}
    tallies = {name: Tally() for name in rules}
    for image in range(images):
        table, hard = synthetic_image(regime, image, draws, seed)
        winner, clear = full_budget(table)
        errors = torch.from_numpy(table)
        for name, rule in rules.items():  # a strategy keeps nothing of an image: one serves them all
            scores = replay(rule.settings, errors, strategy=rule)
            tally = tallies[name]
            tally.images += 1
            tally.agree += scores.prediction == winner
            tally.clear += clear
            tally.agree_clear += clear and scores.prediction == winner
            tally.correct += scores.prediction == 0
            tally.correct_full += winner == 0
            tally.calls += scores.calls
            tally.hard += hard
            tally.calls_hard += scores.calls if hard else 0
        if progress:
            progress(image)
    return {name: tally.row() for name, tally in tallies.items()}


def record_bytes(regime: Regime, images: int, settings: ScorerSettings, draws: int = 1024, seed: int = 0) -> list[int]:
    """Bytes of each image's record line (every evaluated per-draw error kept) under `settings`."""
    import json

    from ..records import image_record

    names = [f"class {k}" for k in range(regime.candidates)]
    return [len(json.dumps(image_record(image, replay(settings, torch.from_numpy(error_table(regime, image, draws,
                                                                                            seed))), names)))
            for image in range(images)]


def table_parser(description: str) -> argparse.ArgumentParser:
    """The options `print_table` reads: which regimes, how many images, the full budget, the seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1024, help="the full budget")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def print_table(options: argparse.Namespace, header: list[str], cells: Callable[[Regime, dict], list[str]],
                configurations: Optional[Callable[[Regime], dict]] = None, note: str = "") -> None:
    """One markdown row per regime and strategy of `options.regimes` (`table_parser`'s options): the
    regime, the strategy's name, then `cells(regime, row)`; a row also has its strategy's name
    ("rule") and its calls over Clark & Jaini's ("share"). Then what was run (`note` added) and how long."""
    started = time.perf_counter()
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in options.regimes:
        regime = REGIMES[name]
        rows = run_regime(regime, options.images, options.draws, options.seed,
                          configurations=configurations(regime) if configurations else None)
        reference = rows[CLARK_JAINI]["calls"]
        for strategy, row in rows.items():
            row = {**row, "rule": strategy, "share": row["calls"] / reference}
            print("| " + " | ".join([name, strategy, *cells(regime, row)]) + " |", flush=True)
    print(f"\n{options.images} images per regime, full budget {options.draws} draws{note}; "
          f"{time.perf_counter() - started:.0f} s")


def main(argv: Optional[list[str]] = None) -> None:
    parser = table_parser(__doc__.split("\n")[0])
    parser.add_argument("--record_bytes", action="store_true",
                        help="instead: bytes per image of a record line, under the default and the full budget")
    options = parser.parse_args(argv)
    if options.record_bytes:
        print("| regime | strategy | record bytes per image: median | max |\n|---|---|---|---|")
        for name in options.regimes:
            for label, settings in (("default", ScorerSettings(draws=options.draws)),
                                    ("fixed", ScorerSettings(strategy="fixed", draws=options.draws))):
                sizes = sorted(record_bytes(REGIMES[name], options.images, settings, options.draws, options.seed))
                print(f"| {name} | {label} | {sizes[len(sizes) // 2]:,} | {sizes[-1]:,} |", flush=True)
        return
    print_table(options, ["regime", "strategy", "agree (all)", "agree (clear, n)", "accuracy / full budget", "calls",
                          "share of C&J", "calls: easy / hard images"],
                lambda regime, row: [f"{row['agreement']:.0%}", f"{row['agreement_clear']:.1%} ({row['clear']})",
                                     f"{row['accuracy']:.0%} / {row['accuracy_full']:.0%}", f"{row['calls']:,.0f}",
                                     f"{row['share']:.2f}", f"{row['calls_easy']:,.0f} / {row['calls_hard']:,.0f}"])


if __name__ == "__main__":
    main()
