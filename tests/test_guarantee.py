"""The default strategy's guarantee, replaying records, and the one-prompt-per-class default."""
import json

import pytest
import torch

from clip_benchmark_diffusion.benchmarks import multiplicity
from clip_benchmark_diffusion.benchmarks.stress import REGIMES, Regime, error_table, full_budget, run_regime
from clip_benchmark_diffusion.prompts import canonical_templates
from clip_benchmark_diffusion.records import encode_per_draw, per_draw_errors
from clip_benchmark_diffusion.replay import MissingErrors, replay, replay_record
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from clip_benchmark_diffusion.strategies import GuaranteedElimination, look_schedule, smallest_paired_spread
from fake_backend import FakeBackend
from presets import paper_ttest


# With zero violations among n clear images, a true violation rate of 1% would have shown with
# probability 1 - 0.99^n (over the three regimes together, n is about 250: 92%).
@pytest.mark.parametrize("regime, images, draws", [
    (Regime("10_heavy", 10, 0.5, heavy_tails=True, timestep_variance=True), 240, 512),
    (REGIMES["100_synonyms"], 80, 1024),
    (Regime("1000_heavy", 1000, 0.5, heavy_tails=True, timestep_variance=True), 30, 256),
])
def test_the_default_agrees_with_its_full_budget_on_every_clear_image(regime, images, draws):
    configurations = {"default": ScorerSettings(draws=draws), "full": ScorerSettings(strategy="fixed", draws=draws)}
    if regime.synonyms:  # the previous default: pooled t-test, p < 0.02 from 2 draws, at most 64
        configurations["old"] = ScorerSettings(strategy="ttest", draws=64, ttest_p=0.02, min_draws=2, round_draws=1,
                                               ttest_variance="pooled", templates="average_embeddings")
    rows = run_regime(regime, images, draws=draws, seed=7, configurations=configurations)
    default, full = rows["default"], rows["full"]
    assert default["clear"] >= images // 5  # the regime has clear images to judge
    assert default["disagree_clear"] == 0
    # where the full budget is not clear, the default answers one of its tied candidates: accuracy holds
    assert default["accuracy"] >= full["accuracy"] - 0.05
    assert default["calls"] < 0.5 * full["calls"]  # and it is adaptive: far below the full budget
    if regime.synonyms:  # the check can fail: the previous default breaks it on near-ties
        assert rows["old"]["disagree_clear"] > 0


def test_looks_are_geometric_and_end_at_the_full_budget():
    assert look_schedule(8, 2.0, 100) == [8, 16, 32, 64, 100]
    assert look_schedule(8, 1.25, 20) == [8, 10, 13, 17, 20]
    assert look_schedule(50, 2.0, 10) == [10]


def test_the_last_look_is_exact():
    """With every draw in, the finite-population bound is exact: the answer is the full budget's."""
    table = torch.from_numpy(error_table(REGIMES["10_hard"], 3, 64))
    winner, _ = full_budget(table.numpy())
    scores = replay(ScorerSettings(draws=64, min_draws=64), table)
    assert scores.prediction == winner and scores.calls == 10 * 64


def two_finalists(gap_in_standard_errors: float, draws: int = 1024, seed: int = 0) -> torch.Tensor:
    """Errors of two candidates (plus a far-off third) whose full-budget gap is exactly the given
    number of standard errors of their paired difference; candidate 0 leads."""
    generator = torch.Generator().manual_seed(seed)
    shared = 10 * torch.randn(draws, generator=generator, dtype=torch.float64)
    residual = torch.randn(3, draws, generator=generator, dtype=torch.float64)
    residual -= residual.mean(dim=1, keepdim=True)
    difference = residual[1] - residual[0]
    gap = gap_in_standard_errors * float(difference.std()) / draws ** 0.5
    return shared + residual + torch.tensor([0.0, gap, 50.0], dtype=torch.float64)[:, None]


@pytest.mark.parametrize("gap", [1.0, 2.0, 5.0])
def test_the_leader_is_returned_once_nobody_can_beat_it_clearly(gap, monkeypatch):
    """The second stop: decided before the full budget when no open rival can be a clear winner
    over the leader, whether the finalists are tied (1, 2 SE) or the leader is clearly ahead (5 SE)."""
    table = two_finalists(gap)
    assert full_budget(table.numpy())[0] == 0
    scores = replay(ScorerSettings(draws=1024), table)
    assert scores.prediction == 0
    assert int(scores.draws[0]) < 1024  # it stopped early
    # without the stop, strict elimination spends at least half as much again
    monkeypatch.setattr(GuaranteedElimination, "_no_clear_winner_over_leader", lambda *args: False)
    strict_only = replay(ScorerSettings(draws=1024), table)
    assert strict_only.prediction == 0 and strict_only.calls > 1.5 * scores.calls


def test_a_clear_rival_keeps_the_image_open():
    """Leader 0 by the first draws, but candidate 1 wins the full budget clearly: the rule does not
    stop on the leader; it returns the full budget's winner."""
    table = two_finalists(-6.0, seed=3)  # negative gap: candidate 1 is the winner
    assert full_budget(table.numpy()) == (1, True)
    scores = replay(ScorerSettings(draws=1024), table)
    assert scores.prediction == 1


def test_smallest_paired_spread_is_the_minimum_over_every_other_candidate():
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(5, 40, generator=generator, dtype=torch.float64) * torch.arange(1, 6)[:, None]
    table[3, 20:] = float("nan")  # dropped after 20 draws
    table[4, 1:] = float("nan")  # one draw: no spread, ignored
    candidates = torch.tensor([0, 2])
    expected = []
    for c in candidates.tolist():
        spreads = []
        for j in range(5):
            length = min(int((~torch.isnan(table[j])).sum()), 30)
            if j != c and length >= 2:
                spreads.append(float((table[c, :length] - table[j, :length]).std()))
        expected.append(min(spreads))
    assert torch.allclose(smallest_paired_spread(table, candidates, 30), torch.tensor(expected, dtype=torch.float64))


def pixels(n, seed=0, size=8):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


CANDIDATES = [[f"a photo of a {c}.", f"a {c}."] for c in ("cat", "dog", "bird", "fish", "cow")]


@pytest.mark.parametrize("settings", [
    ScorerSettings(draws=64, templates="average_errors"),
    ScorerSettings(draws=64, delta=0.2, min_draws=2),
    paper_ttest(draws=48),
    ScorerSettings(strategy="schedule", schedule_keep=(3, 1), schedule_draws=(4, 12), templates="average_errors"),
    ScorerSettings(draws=64, max_calls=150),
])
def test_replaying_the_scores_reproduces_predictions_and_calls_exactly(settings):
    backend = FakeBackend(spread=0.05)
    results = DiffusionScorer(backend, settings).score(pixels(6), CANDIDATES)
    rows = [len(c) for c in CANDIDATES] if settings.templates == "average_errors" else None
    for scores in results:
        again = replay(settings, scores.per_draw, rows_per_candidate=rows)
        assert (again.prediction, again.calls, again.ranking) == (scores.prediction, scores.calls, scores.ranking)
        assert again.draws.tolist() == scores.draws.tolist() and again.capped == scores.capped
        assert again.confidence == scores.confidence and again.survivors_per_round == scores.survivors_per_round
        # the record's compact encoding keeps every evaluated error exactly
        line = {"draws": scores.draws.tolist(), "per_draw_f64": encode_per_draw(scores.per_draw, scores.draws)}
        decoded = per_draw_errors(line)
        assert torch.equal(torch.isnan(decoded), torch.isnan(scores.per_draw))
        assert torch.equal(torch.nan_to_num(decoded), torch.nan_to_num(scores.per_draw))


def test_replay_refuses_to_invent_errors_the_run_never_evaluated():
    backend = FakeBackend(spread=0.5)
    scores = DiffusionScorer(backend, ScorerSettings(draws=32)).score(pixels(1), CANDIDATES)[0]
    assert bool(torch.isnan(scores.per_draw).any())  # the run left some errors unevaluated
    with pytest.raises(MissingErrors):
        replay(ScorerSettings(strategy="fixed", draws=32), scores.per_draw)


def test_a_record_is_re_decided_without_a_model(tmp_path):
    from clip_benchmark.metrics import zeroshot_classification

    from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
    from clip_benchmark_diffusion.replay import main

    path = str(tmp_path / "run.diffusion.jsonl")
    backend = FakeBackend(spread=0.05)
    tokenizer = PromptTokenizer()
    settings = ScorerSettings(strategy="fixed", draws=32)
    model = DiffusionZeroShotModel(DiffusionScorer(backend, settings), tokenizer, record_path=path,
                                   record_header={"settings": settings.to_dict()}, show_progress=False)
    classes = ["cat", "dog", "bird"]
    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, classes, ["a photo of a {c}."], "cpu")
    images = pixels(5)

    class Loader:
        def __iter__(self):
            yield images, torch.zeros(5, dtype=torch.long)

    zeroshot_classification.run_classification(model, classifier, Loader(), "cpu")
    model.finish(labels=[0] * 5)
    same = replay_record(path)["summary"]
    assert same["agreement"] == 1.0 and same["calls_per_image"] == same["recorded_calls_per_image"] == 3 * 32
    cheaper = replay_record(path, {"strategy": "guaranteed", "min_draws": 4, "delta": 0.5})["summary"]
    assert cheaper["calls_per_image"] < 3 * 32 and "acc1" in cheaper
    out = tmp_path / "replayed.json"
    assert main([path, "--set", "strategy=ttest", "--set", "min_draws=4", "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["images"]) == 5
    assert main([path, "--set", "strategy=nonsense"]) == 2


def test_one_canonical_prompt_per_class_by_default():
    assert ScorerSettings().templates == "single" and ScorerSettings().strategy == "guaranteed"
    assert ScorerSettings().draws >= 1024
    templates = ["a bad photo of a {c}.", "a photo of many {c}."]
    assert canonical_templates("imagenet1k", templates) == ["a photo of a {c}."]  # the papers' prompt
    assert canonical_templates("wds/imagenet1k", templates) == ["a photo of a {c}."]
    assert canonical_templates("dtd", templates) == ["a bad photo of a {c}."]  # else the first template
    assert canonical_templates("x", {"cat": ["p1", "p2"]}) == {"cat": ["p1"]}
    backend = FakeBackend(spread=0.05)
    encoded = []
    encode = backend.encode_prompts
    backend.encode_prompts = lambda prompts: encoded.extend(prompts) or encode(prompts)
    scores = DiffusionScorer(backend, ScorerSettings(strategy="fixed", draws=4)).score(pixels(1), CANDIDATES)[0]
    assert encoded == [c[0] for c in CANDIDATES] and scores.calls == len(CANDIDATES) * 4


def test_the_multiplicity_benchmark_prices_each_correction_of_the_default():
    """Its fully corrected variant is the default rule (same answers, same calls); each correction it
    leaves out makes the rule cheaper, and leaving both out is cheaper still."""
    regime = REGIMES["10_mixed"]
    variants = multiplicity.configurations(regime, 256, 0.01)
    rows = run_regime(regime, 24, draws=256, seed=3,
                      configurations={**variants, "default": ScorerSettings(draws=256)})
    assert rows["comparators and looks (the default)"] == rows["default"]
    full, floor = rows["default"]["calls"], rows["none (floor)"]["calls"]
    for partial in ("comparators only", "looks only"):
        assert floor < rows[partial]["calls"] < full
    assert floor < 0.7 * full
    assert multiplicity.target(REGIMES["10_mixed"]) == 0.5 and multiplicity.target(REGIMES["10_hard"]) == 1.0
