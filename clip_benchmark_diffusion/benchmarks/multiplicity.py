"""What the guarantee costs: the guaranteed rule with and without its multiplicity correction, against Clark & Jaini.

    python -m clip_benchmark_diffusion.benchmarks.multiplicity --images 100

The guaranteed rule (the default) tests each pair at level delta / ((K - 1) L): a union bound over
the K - 1 comparators of the full budget's winner and over the L looks. The variants here divide
delta by only one of the two, or by neither. They promise nothing (a variant's chance of dropping
the winner can reach delta times what it left out); they are a floor: what a rule of this kind
(drop a class on its pair's confidence bound against the leader, stop when no open rival can win
clearly) spends if its multiplicity were free. A sharper correction of the same rule saves little
(the exact correlated maximum over comparators and the exact crossing over looks: about 5% of the
draws together, `benchmarks.thresholds`), and no way of spending delta over the looks can beat the
"comparators only" row, which keeps only the correction over classes.

Same synthetic tables as `benchmarks.stress` (same generator, seed and full budget); the last
column is the issue's target for the default: at most Clark & Jaini's calls in every regime, at
most half of them where easy and hard images mix.
"""
from __future__ import annotations

from typing import Optional

from ..settings import ScorerSettings
from ..strategies import GuaranteedElimination, ImageState
from .stress import CLARK_JAINI, Regime, print_table, strategies, table_parser

class PartlyCorrected(GuaranteedElimination):
    """The guaranteed rule with delta divided by only some of its multiplicities (no guarantee)."""

    def __init__(self, settings: ScorerSettings, over_comparators: bool, over_looks: bool) -> None:
        super().__init__(settings)
        self.over_comparators, self.over_looks = over_comparators, over_looks

    def test_level(self, state: ImageState) -> float:
        comparators = max(state.tested_candidates - 1, 1) if self.over_comparators else 1
        return self.settings.delta / (comparators * (len(self.looks) if self.over_looks else 1))


CORRECTIONS = {  # label: (over comparators, over looks)
    "comparators and looks (the default)": (True, True),
    "comparators only": (True, False),
    "looks only": (False, True),
    "none (floor)": (False, False),
}


def configurations(regime: Regime, draws: int, delta: float) -> dict:
    rows: dict = {CLARK_JAINI: strategies(regime.candidates, draws)[CLARK_JAINI]}
    settings = ScorerSettings(draws=draws, delta=delta)
    for label, (comparators, looks) in CORRECTIONS.items():
        rows[label] = PartlyCorrected(settings, comparators, looks)
    return rows


def target(regime: Regime) -> float:
    """The issue's ceiling on the default's calls, as a share of Clark & Jaini's."""
    return 0.5 if 0.0 < regime.hard_share < 1.0 else 1.0


def main(argv: Optional[list[str]] = None) -> None:
    parser = table_parser(__doc__.split("\n")[0])
    parser.add_argument("--delta", type=float, default=0.01)
    options = parser.parse_args(argv)
    print_table(options, ["regime", "test level: delta divided over", "agree (clear, n)", "agree (all)",
                          "accuracy / full budget", "calls", "share of C&J", "target"],
                lambda regime, row: [f"{row['agreement_clear']:.1%} ({row['clear']})", f"{row['agreement']:.0%}",
                                     f"{row['accuracy']:.0%} / {row['accuracy_full']:.0%}", f"{row['calls']:,.0f}",
                                     f"{row['share']:.2f}", "" if row["rule"] == CLARK_JAINI else
                                     f"<= {target(regime):.2f}"],
                lambda regime: configurations(regime, options.draws, options.delta), note=f", delta {options.delta}")


if __name__ == "__main__":
    main()
