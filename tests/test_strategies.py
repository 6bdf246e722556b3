"""Adaptive strategies: where UNet calls go, and that pruning keeps the right answer."""
import pytest
import torch

from clip_benchmark_diffusion.backends.base import Conditioning
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from fake_backend import FakeBackend
from presets import FIXED, paper_ttest


class SeparatedBackend(FakeBackend):
    """Candidate k predicts the constant k * gap: expected epsilon error 1 + (k * gap)^2, so 0 is best."""

    def __init__(self, gap: float = 0.05) -> None:
        super().__init__()
        self.gap = gap

    def encode_prompts(self, prompts):
        return Conditioning(states=torch.tensor([[float(p.split()[-1]) * self.gap] for p in prompts]))


def candidates(n: int) -> list[list[str]]:
    return [[f"class {k}"] for k in range(n)]


def images(n: int) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_ttest_elimination_keeps_the_best_and_spends_far_fewer_calls():
    backend = SeparatedBackend(gap=0.3)
    fixed = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=200)).score(images(8), candidates(10))
    pruned = DiffusionScorer(backend, paper_ttest(draws=200)
                             ).score(images(8), candidates(10))
    for a, b in zip(fixed, pruned):
        assert a.prediction == b.prediction == 0
        assert b.dropped_round[0] is None  # the best is never eliminated
        assert b.calls < a.calls / 5
        assert b.survivors_per_round[-1] == 1 and b.survivors_per_round == sorted(b.survivors_per_round, reverse=True)
        # dropped candidates rank after survivors, later eliminations first
        rounds = [b.dropped_round[c] or 10**9 for c in b.ranking]
        assert rounds == sorted(rounds, reverse=True)
        # survivors share every draw, so their comparisons are paired
        assert int(b.draws[0]) == b.per_draw.shape[1]


def test_pooled_variance_equals_the_paired_test_for_two_candidates():
    from clip_benchmark_diffusion.strategies import ImageState, TTestElimination

    errors = torch.tensor([[1.0, 2.0, 0.5, 3.0, 1.5], [1.3, 2.1, 0.9, 3.6, 1.6]], dtype=torch.float64)
    kept = {}
    for variance in ("paired", "pooled"):
        # the difference has t = 3.16 with 4 df: one-sided p = 0.0171, so the p threshold decides
        for p, expect_drop in ((0.0175, True), (0.0165, False)):
            state = ImageState(2, 5)
            state.per_draw[:] = errors
            state.draws_done = 5
            TTestElimination(paper_ttest(ttest_p=p, ttest_variance=variance)).after_round(state)
            kept[(variance, p)] = state.active.tolist()
            assert state.active.tolist() == ([True, False] if expect_drop else [True, True])
    assert kept[("paired", 0.0175)] == kept[("pooled", 0.0175)]


def test_pooled_ttest_prunes_many_candidates_after_two_draws_and_keeps_the_best():
    backend = SeparatedBackend(gap=0.1)
    settings = paper_ttest(draws=64, min_draws=2, round_draws=1)
    paired = DiffusionScorer(backend, settings).score(images(6), candidates(20))
    pooled = DiffusionScorer(backend, settings.replace(ttest_variance="pooled")).score(images(6), candidates(20))
    for a, b in zip(paired, pooled):
        assert a.prediction == b.prediction == 0 and b.dropped_round[0] is None
        # a pair's own variance has one df after two draws; the pooled one has 19
        assert b.survivors_per_round[0] <= 10 and b.survivors_per_round[0] <= a.survivors_per_round[0]
    assert sum(b.calls for b in pooled) < 0.8 * sum(a.calls for a in paired)


def test_ttest_with_identical_candidates_never_drops_and_stops_at_max_draws():
    backend = SeparatedBackend(gap=0.0)
    result = DiffusionScorer(backend, paper_ttest(draws=32)
                             ).score(images(1), candidates(3))[0]
    assert result.dropped_round == [None, None, None] and result.draws.tolist() == [32, 32, 32]


def test_schedule_keeps_the_top_k_and_reuses_earlier_draws():
    backend = SeparatedBackend(gap=0.2)
    settings = ScorerSettings(templates="average_errors", strategy="schedule", schedule_keep=(3, 1), schedule_draws=(8, 24))
    result = DiffusionScorer(backend, settings).score(images(2), candidates(6))
    fixed8 = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=8)).score(images(2), candidates(6))
    for r, f in zip(result, fixed8):
        assert r.survivors_per_round == [3, 1]
        assert sorted(r.draws.tolist()) == [8, 8, 8, 24, 24, 24]
        assert r.calls == 6 * 8 + 3 * 16
        assert torch.allclose(r.per_draw[:, :8], f.per_draw)  # stage 2 extends stage 1's draws
        assert r.prediction == 0


def test_same_seed_same_decisions_for_adaptive_strategies():
    backend = SeparatedBackend(gap=0.02)
    settings = paper_ttest(draws=64, seed=5)
    a = DiffusionScorer(backend, settings).score(images(4), candidates(5))
    b = DiffusionScorer(backend, settings.replace(batch_size=7)).score(images(4), candidates(5))
    assert [r.ranking for r in a] == [r.ranking for r in b]
    assert [r.calls for r in a] == [r.calls for r in b]


@pytest.mark.parametrize("bad", [dict(strategy="schedule"), dict(min_draws=1), dict(ttest_p=0.0)])
def test_bad_strategy_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        ScorerSettings(**bad)


def test_error_cache_replays_identical_draws_without_new_calls():
    backend = SeparatedBackend(gap=0.1)
    cache: dict = {}
    fixed = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=64), error_cache=cache).score(images(3), candidates(6))
    rows = backend.predict_rows
    pruned = DiffusionScorer(backend, paper_ttest(draws=64), error_cache=cache
                             ).score(images(3), candidates(6))
    assert backend.predict_rows == rows  # every error came from the cache
    uncached = DiffusionScorer(SeparatedBackend(gap=0.1), paper_ttest(draws=64)
                               ).score(images(3), candidates(6))
    for a, b in zip(pruned, uncached):
        assert a.calls == b.calls and a.ranking == b.ranking  # calls are counted as if computed
        assert torch.allclose(a.errors, b.errors)
    assert fixed[0].calls == 6 * 64
    with pytest.raises(ValueError, match="only in settings that do not change an error"):
        DiffusionScorer(backend, ScorerSettings(**FIXED, objective="x0_heuristic"), error_cache=cache)


def test_confidence_reflects_the_calls_an_image_needed():
    backend = SeparatedBackend(gap=0.3)
    easy = DiffusionScorer(backend, paper_ttest(draws=200)).score(images(4), candidates(4))
    hard = DiffusionScorer(SeparatedBackend(gap=0.0), paper_ttest(draws=200)
                           ).score(images(4), candidates(4))
    assert all(r.confidence > 0.5 for r in easy) and all(r.confidence == 0.0 for r in hard)
    fixed = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=8)).score(images(1), candidates(4))[0]
    assert fixed.confidence == 1.0 and 0.25 <= fixed.softmax_confidence < 0.4  # near 1 / candidates


def test_prefilter_shortlist_scores_only_the_top_k_and_ranks_the_rest_by_the_prior():
    backend = SeparatedBackend(gap=0.3)
    prior = [[3, 0, 5, 1, 2, 4]] * 2
    results = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=16)).score(images(2), candidates(6), prior_orders=prior,
                                                                        shortlist_size=3)
    for r in results:
        assert r.calls == 3 * 16 and r.draws.tolist() == [16, 0, 0, 16, 0, 16]
        assert r.ranking[:3] == [0, 3, 5]  # scored shortlist by error (candidate 0 is best)
        assert r.ranking[3:] == [1, 2, 4]  # the rest in the prior's order


def test_acc1_does_not_depend_on_how_dropped_candidates_are_ranked():
    """The top-1 prediction is always the best *survivor*; dropped candidates only move within
    ranks 2.., so top-1 accuracy is the same whatever order they are given."""
    backend = SeparatedBackend(gap=0.05)
    for r in DiffusionScorer(backend, paper_ttest(draws=64)).score(images(6), candidates(8)):
        survivors = [c for c in range(8) if r.dropped_round[c] is None]
        assert r.prediction == min(survivors, key=lambda c: float(r.errors[c]))
        dropped_errors = [float(r.errors[c]) for c in range(8) if r.dropped_round[c] is not None]
        assert r.prediction not in [c for c in range(8) if r.dropped_round[c] is not None]
        if dropped_errors:  # ranking dropped ones by raw error instead would not change the top-1
            by_error = sorted(range(8), key=lambda c: (r.dropped_round[c] is not None, float(r.errors[c])))
            assert by_error[0] == r.prediction
