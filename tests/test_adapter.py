"""The clip_benchmark adapter: clip_benchmark's own metric code must see the scorer's ranking."""

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification

from clip_benchmark_diffusion.integration import rank_codec
from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
from clip_benchmark_diffusion.records import read_records
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from fake_backend import FakeBackend
from presets import FIXED


class ListLoader:
    """The (images, targets) batches clip_benchmark iterates, plus `.dataset.classes`."""

    def __init__(self, images, targets, classes, batch_size=4):
        self.batches = [(images[i:i + batch_size], targets[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        self.dataset = type("Dataset", (), {"classes": classes, "__len__": lambda self: len(images)})()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rank_grid_is_strictly_decreasing_and_exact_in_its_dtype(dtype):
    grid = rank_codec.rank_grid(dtype)
    assert bool((grid[1:] < grid[:-1]).all()) and len(grid) > 10000
    if dtype != torch.float32:
        assert torch.equal(grid.to(dtype).to(torch.float32), grid)
        # two representable steps apart: the midpoint of neighbours is itself representable
        mid = ((grid[1:] + grid[:-1]) / 2)
        assert torch.equal(mid.to(dtype).to(torch.float32), mid)


@pytest.mark.parametrize("amp", [False, True])
def test_clip_benchmark_metric_sees_the_scorer_ranking_for_1200_near_tied_classes(amp, tmp_path):
    classes = [f"class {i}" for i in range(1200)]
    templates = ["a photo of a {c}.", "a {c}."]
    backend = FakeBackend(spread=1e-3)  # errors of different classes differ in the 6th-7th digit
    settings = ScorerSettings(**FIXED, draws=2, batch_size=4096, max_candidates=2048)
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    scorer = DiffusionScorer(backend, settings)
    expected = scorer.score(images, [[t.format(c=c) for t in templates] for c in classes])
    targets = torch.tensor([r.ranking[0] if i % 2 else r.ranking[3] for i, r in enumerate(expected)])

    tokenizer = PromptTokenizer()
    model = DiffusionZeroShotModel(scorer, tokenizer, record_path=str(tmp_path / "run.diffusion.jsonl"),
                                   show_progress=False)
    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, classes, templates, "cpu", amp=amp)
    logits, _ = zeroshot_classification.run_classification(model, classifier, ListLoader(images, targets, classes),
                                                           "cpu", amp=amp)
    gaps = [float(r.errors[r.ranking[1]] - r.errors[r.ranking[0]]) for r in expected]
    assert min(gaps) < 1e-5  # the top two really are near-tied
    for row, result in zip(logits, expected):
        order = torch.argsort(row, descending=True, stable=True).tolist()
        assert order == result.ranking  # the full ranking of all 1200 classes
        assert row.unique().numel() == len(classes)  # no ties introduced
    metrics = zeroshot_classification.evaluate(model, ListLoader(images, targets, classes), tokenizer, classes,
                                               templates, "cpu", amp=amp)
    assert metrics["acc1"] == pytest.approx(0.5) and metrics["acc5"] == pytest.approx(1.0)


def test_records_are_written_per_image_and_reused_after_a_crash(tmp_path):
    backend = FakeBackend(spread=0.5)
    classes, templates = ["a", "b", "c"], ["{c}"]
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    path = str(tmp_path / "run.diffusion.jsonl")

    def run(images_to_score):
        tokenizer = PromptTokenizer()
        model = DiffusionZeroShotModel(DiffusionScorer(backend, ScorerSettings(**FIXED, draws=3)), tokenizer,
                                       record_path=path, record_header={"settings": "s"}, show_progress=False)
        classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, classes, templates, "cpu")
        loader = ListLoader(images_to_score, torch.zeros(len(images_to_score), dtype=torch.long), classes, 2)
        return model, zeroshot_classification.run_classification(model, classifier, loader, "cpu")

    run(images[:3])  # a run that "died" after three images (no summary written)
    rows_before = backend.predict_rows
    model, _ = run(images)
    assert backend.predict_rows - rows_before == 2 * 3 * 3  # only the two new images were scored
    model.finish(labels=[0] * 5)
    from clip_benchmark_diffusion.records import per_draw_errors

    record = read_records(path)
    assert len(record["images"]) == 5 and record["summary"]["labels"] == [0] * 5
    first = record["images"][0]
    assert first["prediction"] == first["ranking"][0] and len(first["errors"]) == 3
    assert first["calls"] == 9 and first["draws"] == [3, 3, 3] and per_draw_errors(first).shape == (3, 3)
    assert record["header"]["candidates"] == [["a"], ["b"], ["c"]]


def test_resuming_ignores_speed_only_settings_but_not_scoring_settings(tmp_path):
    from clip_benchmark_diffusion.records import RunRecorder, archive_path, settings_fingerprint

    path = str(tmp_path / "run.diffusion.jsonl")

    def header(**changes):
        settings = {**ScorerSettings(**FIXED).to_dict(), **changes}
        return {"settings": settings, "model": {"backend": "fake", "compile": settings["compile"]},
                "candidates": [["a"], ["b"]]}

    first = RunRecorder(path, header())
    first.add({"type": "image", "image_key": f"{0xFF:016x}", "prediction": 1})
    first.close()
    again = RunRecorder(path, header(batch_size=7, compile="reduce-overhead", channels_last=True))
    assert again.cached(0xFF) is not None  # same scores, faster: earlier images are reused
    again.close()
    other = RunRecorder(path, header(draws=5))
    assert other.cached(0xFF) is None
    other.add({"type": "image", "image_key": f"{0xEE:016x}", "prediction": 0})
    other.close()
    kept = archive_path(path, settings_fingerprint({"type": "header", **header()}))
    assert read_records(kept)["images"][0]["image_key"] == f"{0xFF:016x}"  # the first record is kept aside
    back = RunRecorder(path, header())
    assert back.cached(0xFF) is not None and back.cached(0xEE) is None  # ... and comes back with its settings
    back.close()


def test_encode_image_before_encode_text_is_an_error():
    model = DiffusionZeroShotModel(DiffusionScorer(FakeBackend(), ScorerSettings(**FIXED, draws=1)), PromptTokenizer(),
                                   show_progress=False)
    with pytest.raises(RuntimeError, match="encode_text must register"):
        model.encode_image(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_codec_survives_clip_benchmark_arithmetic_under_each_autocast_dtype(dtype):
    """float16 is what clip_benchmark's amp uses on CUDA; CPU autocast can run it too."""
    import torch.nn.functional as F

    num_classes, capacity = 5000, 8192
    classifier = torch.cat([rank_codec.class_embedding(i, capacity, 1) for i in range(num_classes)]).t()
    ranking = torch.randperm(num_classes, generator=torch.Generator().manual_seed(0)).tolist()
    with torch.autocast("cpu", dtype=dtype):
        features = rank_codec.encode_rankings([ranking], capacity, rank_codec.active_autocast_dtype("cpu"))
        logits = 100.0 * F.normalize(features, dim=-1) @ classifier
    assert logits.dtype == dtype
    assert torch.argsort(logits.float()[0], descending=True, stable=True).tolist() == ranking


class CaptionLoader:
    """(images [B, nim, C, H, W], captions [B][nt]) batches as clip_benchmark's caption tasks yield."""

    def __init__(self, images, captions):
        self.batches = [(images, captions)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return 1


@pytest.mark.parametrize("images_per_instance", [1, 2])
def test_caption_selection_through_clip_benchmark_matches_the_scorer(images_per_instance, tmp_path):
    from clip_benchmark.metrics import image_caption_selection

    from clip_benchmark_diffusion.registration import register

    register()  # clip_benchmark must tell the model each batch's layout
    backend = FakeBackend(spread=0.8)
    settings = ScorerSettings(**FIXED, draws=16)
    captions = [[f"caption {i}-{k}" for k in range(3)] for i in range(12)]
    images = torch.rand(12, images_per_instance, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    scorer = DiffusionScorer(backend, settings)
    text_correct, image_correct = [], []
    for instance, texts in zip(images, captions):
        candidates = [[t] for t in texts] + [[""]]
        errors = torch.stack([r.errors for r in scorer.score(instance, candidates)])
        relative = errors[:, :3] - errors[:, 3:]
        gt = torch.arange(images_per_instance)
        text_correct.append(bool((errors[:, :3].argmin(dim=1) == gt).all()))
        image_correct.append(bool((relative.argmin(dim=0)[:images_per_instance] == gt).all())
                             if images_per_instance > 1 else True)
    model = DiffusionZeroShotModel(DiffusionScorer(backend, settings), PromptTokenizer(), show_progress=False,
                                   task="image_caption_selection", record_path=str(tmp_path / "r.jsonl"))
    batch = images if images_per_instance > 1 else images[:, 0]
    for amp in (False, True):
        metrics = image_caption_selection.evaluate(model, CaptionLoader(batch, captions), model.tokenizer, "cpu",
                                                   amp=amp)
        assert metrics["text_acc"] == pytest.approx(sum(text_correct) / 12)
        assert metrics["image_acc"] == pytest.approx(sum(image_correct) / 12)
    # not trivial (with two images the fake backend's captions favour one image, so only the image side varies)
    assert 0 < (sum(text_correct) if images_per_instance == 1 else sum(image_correct)) < 12
    record = read_records(str(tmp_path / "r.jsonl"))
    assert len(record["images"]) == 12 * images_per_instance  # the amp rerun reused the records


def test_image_records_carry_their_wall_time(tmp_path):
    tokenizer = PromptTokenizer()
    model = DiffusionZeroShotModel(DiffusionScorer(FakeBackend(), ScorerSettings(**FIXED, draws=2)), tokenizer,
                                   record_path=str(tmp_path / "r.jsonl"), show_progress=False)
    model.encode_text(tokenizer(["a"]))
    model.encode_text(tokenizer(["b"]))
    model.rank(torch.rand(2, 3, 8, 8))
    model.finish()
    images = read_records(str(tmp_path / "r.jsonl"))["images"]
    assert all(image["seconds"] > 0 for image in images)
