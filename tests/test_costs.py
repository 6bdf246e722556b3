"""What a run costs: the preview's bounds, the per-image cap, and the cost of the defaults."""
import pytest
import torch

from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings, UnsupportedSettings
from clip_benchmark_diffusion.strategies import call_bounds
from fake_backend import FakeBackend
from presets import FIXED

CANDIDATES = [[f"a photo of a {c}.", f"a {c}."] for c in ("cat", "dog", "bird", "fish", "cow")]


def images(n, seed=0):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


STRATEGIES = [
    ScorerSettings(**FIXED, draws=8),
    ScorerSettings(templates="average_errors", draws=64, strategy="ttest", min_draws=2, round_draws=2,
                   ttest_variance="pooled", ttest_p=0.05),
    ScorerSettings(templates="average_errors", strategy="schedule", schedule_keep=(3, 1), schedule_draws=(4, 12)),
]


@pytest.mark.parametrize("settings", STRATEGIES, ids=["fixed", "ttest", "schedule"])
def test_spent_calls_lie_within_the_bounds_and_equal_them_where_the_strategy_fixes_them(settings):
    results = DiffusionScorer(FakeBackend(spread=0.5), settings).score(images(6), CANDIDATES)
    bounds = call_bounds(settings, len(CANDIDATES), rows_per_candidate=2)
    for result in results:
        assert bounds.fewest <= result.calls <= bounds.most
        if bounds.expected is not None:
            assert result.calls == bounds.expected
    if settings.strategy == "fixed":
        assert bounds.most == 5 * 2 * 8
    if settings.strategy == "schedule":
        assert bounds.most == 5 * 2 * 4 + 3 * 2 * 8  # every candidate to 4 draws, the best 3 to 12


@pytest.mark.parametrize("settings", STRATEGIES, ids=["fixed", "ttest", "schedule"])
@pytest.mark.parametrize("cap", [10, 25, 47])
def test_the_cap_is_never_exceeded_and_capped_images_are_marked(settings, cap):
    uncapped = DiffusionScorer(FakeBackend(spread=0.5), settings).score(images(6), CANDIDATES)
    capped = DiffusionScorer(FakeBackend(spread=0.5), settings.replace(max_calls=cap)).score(images(6), CANDIDATES)
    for free, limited in zip(uncapped, capped):
        assert limited.calls <= cap
        assert limited.capped == (free.calls > cap)
        if not limited.capped:  # a cap that does not bind changes nothing
            assert limited.calls == free.calls and limited.ranking == free.ranking
        assert not torch.isnan(limited.errors[limited.prediction])  # every decision rests on draws


def test_a_cap_below_one_draw_of_every_candidate_is_refused():
    with pytest.raises(UnsupportedSettings, match="cannot pay for one draw of every candidate"):
        DiffusionScorer(FakeBackend(), ScorerSettings(**FIXED, draws=4, max_calls=9)).score(images(1), CANDIDATES)


def test_the_preview_line_states_what_a_fixed_run_then_spends(capsys):
    tokenizer = PromptTokenizer()
    scorer = DiffusionScorer(FakeBackend(spread=0.5), ScorerSettings(**FIXED, draws=3))
    model = DiffusionZeroShotModel(scorer, tokenizer, show_progress=False)
    model.expected_images = 4
    for prompts in CANDIDATES:
        model.encode_text(tokenizer(prompts))
    model.rank(images(4))
    line = [text for text in capsys.readouterr().err.splitlines() if "UNet calls per image" in text][0]
    assert "5 candidates x 2 templates (average_errors), strategy fixed" in line
    assert "at most 30, at least 30, expected 30; 4 images: at most 120" in line
    assert model.calls == 120


def test_the_defaults_score_1000_classes_x_80_templates_without_paying_for_the_templates():
    """ImageNet's shape (1000 classes, clip_benchmark's 80 templates): the old defaults (fixed 64 draws,
    every template scored) cost 5,120,000 calls per image; the defaults score one prompt per class,
    between 8 draws (the first look) and 1024 (the full budget) per class."""
    candidates = [[f"template {k} of class {c}" for k in range(80)] for c in range(1000)]
    settings = ScorerSettings(batch_size=8192)  # the defaults; the batch size only changes speed
    bounds = call_bounds(settings, len(candidates), rows_per_candidate=1)
    assert (bounds.fewest, bounds.most) == (8 * 1000, 1024 * 1000)
    backend = FakeBackend(spread=0.5)
    results = DiffusionScorer(backend, settings).score(images(2), candidates)
    assert all(bounds.fewest <= r.calls <= bounds.most for r in results)
    assert backend.predict_rows == sum(r.calls for r in results)
    # 1000 nearly tied candidates (the fake's predictions differ by at most 0.5): most leave early all the same
    assert max(r.calls for r in results) < bounds.most / 4
