"""The reference-model scripts: tokenizer parity, tiny training runs, and the shipped weights.

Everything runs offline (HF_HUB_OFFLINE=1) and on CPU in well under a minute: the training
runs are 2-3 steps on a handful of world samples, only to prove the outputs load through the
normal diffusers / open_clip paths.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from clip_benchmark_diffusion import reference
from clip_benchmark_diffusion.reference import tokenizer as ref_tokenizer

CAPTIONS = ["a red circle", "a circle", "a orange object", "a red circle and a blue square",
            "a purple heart and a green star.", "A Yellow Cross!"]
MAX_MODEL_BYTES = 20 * 1024 * 1024  # each shipped model, tokenizer files included


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The training runs below use `--threads 1` (tiny batches gain nothing from more, and a busy
    machine makes spinning threads slow); put the process-wide setting back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _open_clip_ids(captions, context_length):
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")(captions, context_length=context_length)


def test_tokenizer_matches_open_clip(tmp_path):
    from transformers import CLIPTokenizer

    built = ref_tokenizer.build_clip_tokenizer()
    ref_tokenizer.save_clip_tokenizer(str(tmp_path))
    loaded = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert len(built) == len(loaded) == ref_tokenizer.VOCAB_SIZE
    expected = _open_clip_ids(CAPTIONS, ref_tokenizer.MODEL_MAX_LENGTH)
    for tok in (built, loaded):
        ids = tok(CAPTIONS, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        assert ids.shape == expected.shape
        content = expected != 0  # open_clip pads with 0, Stable Diffusion's tokenizer with <|endoftext|>
        assert torch.equal(ids[content], expected[content])
        assert bool((ids[~content] == tok.eos_token_id).all())


def test_train_diffusion_writes_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from clip_benchmark_diffusion.reference import quick_eval, train_diffusion

    out = tmp_path / "sd"
    train_diffusion.main(["--out", str(out), "--steps", "3", "--vae-steps", "2", "--samples", "12",
                          "--batch-size", "4", "--vae-batch-size", "4", "--threads", "1", "--device", "cpu"])
    pipeline = StableDiffusionPipeline.from_pretrained(str(out))
    assert pipeline.unet.dtype == pipeline.text_encoder.dtype == pipeline.vae.dtype == torch.float32
    assert pipeline.scheduler.config.prediction_type == "epsilon"
    assert pipeline.scheduler.config.beta_schedule == "scaled_linear"
    assert pipeline.tokenizer.model_max_length == pipeline.text_encoder.config.max_position_embeddings
    assert pipeline.vae.config.scaling_factor != 0.18215  # measured from the latents, not SD's default
    rows = (out / "training_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 3
    assert json.loads((out / "training_summary.json").read_text())["unet_steps"] == 3
    accuracy = quick_eval.evaluate(str(out), tasks=("binding",), n=2, draws=2, device="cpu", verbose=False)
    assert accuracy["binding"] * 2 in (0, 1, 2)  # a fraction of exactly the 2 instances asked for


def test_train_flow_writes_a_loadable_sd3_pipeline(tmp_path):
    from diffusers import AutoencoderKL, StableDiffusion3Pipeline

    from clip_benchmark_diffusion.checkpoints import load_backend
    from clip_benchmark_diffusion.reference import train_flow

    out = tmp_path / "flow"
    train_flow.main(["--out", str(out), "--steps", "3", "--samples", "12", "--batch-size", "4", "--threads", "1",
                     "--device", "cpu", "--layers", "1", "--heads", "2", "--head-dim", "8", "--clip-hidden", "16",
                     "--t5-width", "32", "--t5-heads", "2"])
    pipeline = StableDiffusion3Pipeline.from_pretrained(str(out))
    parts = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    assert all(getattr(pipeline, part).dtype == torch.float32 for part in parts)
    assert pipeline.tokenizer_3.model_max_length == pipeline.tokenizer.model_max_length == ref_tokenizer.MODEL_MAX_LENGTH
    assert pipeline.scheduler.config.shift == 1.0
    # the SD-format model's VAE, frozen, with SD3's shift and scale measured on the world's latents
    reference_vae = AutoencoderKL.from_pretrained(reference.REFERENCE_SD_DIR, subfolder="vae")
    assert all(torch.equal(a, b) for a, b in zip(pipeline.vae.state_dict().values(),
                                                    reference_vae.state_dict().values()))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 3 and len((out / "training_log.csv").read_text().splitlines()) == 1 + 3
    assert pipeline.vae.config.shift_factor == pytest.approx(summary["shift_factor"]) != 0.0
    assert pipeline.vae.config.scaling_factor == pytest.approx(summary["scaling_factor"]) != 1.0
    # and the plugin picks it up as an SD3 model with its T5 (16 tokens, not 256 zero tokens)
    backend = load_backend(str(out), device="cpu")
    assert backend.family == "sd3" and backend.max_sequence_length == ref_tokenizer.MODEL_MAX_LENGTH
    conditioning = backend.encode_prompts(["a red circle", "a blue square"])
    assert conditioning.states.shape == (2, 2 * ref_tokenizer.MODEL_MAX_LENGTH, 32)


def test_train_clip_writes_a_loadable_open_clip_model(tmp_path):
    import open_clip

    from clip_benchmark_diffusion.reference import train_clip

    out = tmp_path / "ref-world-clip.safetensors"
    train_clip.main(["--out", str(out), "--steps", "2", "--samples", "12", "--batch-size", "6",
                     "--threads", "1", "--device", "cpu"])
    assert json.loads((tmp_path / "ref-world-clip.json").read_text()) == train_clip.MODEL_CONFIG
    reference.register_reference_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(reference.REFERENCE_CLIP_MODEL, pretrained=str(out))
    stored = load_file(str(out))
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert all(torch.equal(model.state_dict()[k], v.float()) for k, v in stored.items())
    _check_clip_runs(model, preprocess)


def _check_clip_runs(model, preprocess):
    import open_clip
    from PIL import Image

    tokens = open_clip.get_tokenizer(reference.REFERENCE_CLIP_MODEL)(CAPTIONS[:2])
    assert tokens.shape == (2, 16)
    pixels = preprocess(Image.new("RGB", (32, 32), (200, 30, 30)))[None]
    with torch.no_grad():
        image_features, text_features = model.encode_image(pixels), model.encode_text(tokens)
    assert image_features.shape == (1, 64) and text_features.shape == (2, 64)
    assert next(model.parameters()).dtype == torch.float32


def _bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def test_shipped_weights_are_small_and_load():
    import open_clip
    from diffusers import StableDiffusionPipeline

    assert os.path.isfile(os.path.join(reference.REFERENCE_SD_DIR, "model_index.json"))
    assert os.path.isfile(reference.REFERENCE_CLIP_FILE)
    for model in (reference.REFERENCE_SD_DIR, reference.REFERENCE_FLOW_DIR, reference.REFERENCE_CLIP_FILE):
        assert 0 < _bytes(model) <= MAX_MODEL_BYTES, model

    pipeline = StableDiffusionPipeline.from_pretrained(reference.REFERENCE_SD_DIR)
    ids = pipeline.tokenizer(["a red circle"], padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipeline.text_encoder(ids).last_hidden_state
        latents = torch.randn(1, 4, 16, 16)
        noise = pipeline.unet(latents, torch.tensor([500]), encoder_hidden_states=hidden).sample
    assert noise.shape == latents.shape and torch.isfinite(noise).all()

    from diffusers import StableDiffusion3Pipeline

    flow = StableDiffusion3Pipeline.from_pretrained(reference.REFERENCE_FLOW_DIR)
    with torch.no_grad():
        states, _, pooled, _ = flow.encode_prompt(["a red circle"], None, None, device="cpu",
                                                  do_classifier_free_guidance=False, max_sequence_length=16)
        velocity = flow.transformer(hidden_states=latents, timestep=torch.tensor([500.0]),
                                    encoder_hidden_states=states, pooled_projections=pooled).sample
    assert velocity.shape == latents.shape and torch.isfinite(velocity).all()

    reference.register_reference_clip()
    for pretrained in (reference.REFERENCE_CLIP_FILE, reference.REFERENCE_PRETRAINED_TAG):
        model, _, preprocess = open_clip.create_model_and_transforms(reference.REFERENCE_CLIP_MODEL,
                                                                     pretrained=pretrained)
        _check_clip_runs(model, preprocess)


def test_flow_training_sigmas_uniform_or_logit_normal():
    """`--sigma-sampling logit_normal` draws sigmoid(N(0, 1)) (SD3's training distribution: mid noise
    more often, the ends rarely); `uniform` is U(0, 1); anything else is refused."""
    from clip_benchmark_diffusion.reference.train_flow import sample_sigmas

    uniform = sample_sigmas("uniform", 20000, torch.Generator().manual_seed(0))
    logit = sample_sigmas("logit_normal", 20000, torch.Generator().manual_seed(0))
    assert torch.equal(logit, torch.sigmoid(torch.randn(20000, generator=torch.Generator().manual_seed(0))))
    assert 0 < float(logit.min()) and float(logit.max()) < 1
    tails = lambda s: float(((s < 0.1) | (s > 0.9)).float().mean())  # noqa: E731
    assert abs(tails(uniform) - 0.2) < 0.02 and tails(logit) < 0.06  # P(|N| > logit(0.9)=2.197) = 0.028
    with pytest.raises(ValueError):
        sample_sigmas("cosine", 4, torch.Generator())
