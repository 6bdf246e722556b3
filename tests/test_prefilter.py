"""The CLIP pre-filter, with a tiny random open_clip model (plumbing, not accuracy)."""
import json

import torch

from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
from clip_benchmark_diffusion.prefilter import ClipPrefilter
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from fake_backend import FakeBackend
from test_cli import TINY_OPEN_CLIP_CONFIG
from presets import FIXED


def tiny_clip(tmp_path) -> str:
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    return f"local-dir:{folder}"


def test_prefilter_ranks_every_candidate_like_clip_zero_shot(tmp_path):
    prefilter = ClipPrefilter(tiny_clip(tmp_path), "")
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    candidates = [["a cat", "a photo of a cat"], ["a dog"], ["a bird"], ["a car"]]
    orders = prefilter.rank(pixels, candidates)
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
    model = prefilter.model
    images = torch.nn.functional.interpolate((pixels + 1) / 2, size=(32, 32), mode="bicubic").clamp(0, 1)
    features = torch.nn.functional.normalize(model.encode_image((images - prefilter.mean) / prefilter.std), dim=-1)
    first = prefilter._embed_candidate(candidates[0])
    manual = torch.nn.functional.normalize(torch.nn.functional.normalize(
        model.encode_text(prefilter.tokenizer(candidates[0])), dim=-1).mean(0), dim=-1)
    assert torch.allclose(first, manual, atol=1e-6)
    assert orders[0][0] == int(torch.argmax(features[0] @ torch.stack(
        [prefilter._embed_candidate(c) for c in candidates], dim=1)))


def test_adapter_scores_only_the_prefilter_shortlist(tmp_path):
    settings = ScorerSettings(**FIXED, draws=4, prefilter_model=tiny_clip(tmp_path), prefilter_pretrained="", prefilter_k=2)
    backend = FakeBackend()
    tokenizer = PromptTokenizer()
    model = DiffusionZeroShotModel(DiffusionScorer(backend, settings), tokenizer, show_progress=False)
    for name in ("cat", "dog", "bird", "car", "ship"):
        model.encode_text(tokenizer([f"a {name}"]))
    rankings = model.rank(torch.rand(2, 3, 8, 8))
    assert backend.predict_rows == 2 * 2 * 4  # 2 images x top-2 x 4 draws
    assert all(sorted(r) == list(range(5)) for r in rankings)
