"""Settings the tests name explicitly, so they do not move when the package defaults do."""
from clip_benchmark_diffusion.settings import ScorerSettings

#: the papers' baseline: every candidate gets every draw, every template is scored
FIXED = {"strategy": "fixed", "templates": "average_errors"}
#: Clark & Jaini's Algorithm 1 as published: paired t-test, p < 2e-3, at least 20 draws, 4 per round
PAPER_TTEST = {"strategy": "ttest", "templates": "average_errors", "ttest_variance": "paired", "ttest_p": 2e-3,
               "min_draws": 20, "round_draws": 4}


def paper_ttest(**changes) -> ScorerSettings:
    return ScorerSettings(**{**PAPER_TTEST, **changes})
