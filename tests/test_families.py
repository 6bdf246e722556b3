"""Every supported family: one draw's error recomputed by hand from the pipeline's own components,
the whole `clip_benchmark eval` CLI on tiny saved folders, and the checkpoint plumbing per family."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import tiny_families
from clip_benchmark_diffusion.checkpoints import CheckpointError, load_backend, locate
from clip_benchmark_diffusion.objectives import draw_noise
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from conftest import write_wds_dataset
from test_cli import in_process_error, run_cli
from presets import FIXED

FAMILIES = ["sdxl", "sd3", "flux", "pixart", "dit", "if"]
#: the diffusers-pipeline keyword arguments the families need at load
LOAD = {"sdxl": {"add_watermarker": False},
        "if": {"safety_checker": None, "feature_extractor": None, "watermarker": None, "requires_safety_checker": False}}


@pytest.fixture(scope="session")
def family_folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    return {name: build(str(root / name)) for name, build in tiny_families.BUILDERS.items()}


def load_pipeline(name, folder):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder, **LOAD.get(name, {}))


def latents(pipe, pixels):
    """The VAE posterior mean, shifted and scaled the way the pipeline's decoder undoes."""
    z = pipe.vae.encode(pixels).latent_dist.mean
    return (z - (pipe.vae.config.shift_factor or 0.0)) * pipe.vae.config.scaling_factor


def ddpm_noising(pipe, x0, noise, t):
    a = pipe.scheduler.alphas_cumprod[t].to(torch.float32)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def flow_sigma_from_table(pipe, t):
    """SD3: the scheduler's own training table (descending sigmas, timesteps = 1000 sigma)."""
    return float(pipe.scheduler.sigmas[pipe.scheduler.config.num_train_timesteps - 1 - t])


def hand_output(name, pipe, pixels, prompt, t, noise, guidance):
    """(x0, target-space pieces, model output) of one draw, straight from the pipeline's parts.
    Returns (x0, x_t, sigma or None, model output's mean channels)."""
    if name == "if":
        x0 = pixels
    else:
        x0 = latents(pipe, pixels)
    if name == "sdxl":
        states, _, pooled, _ = pipe.encode_prompt([prompt], do_classifier_free_guidance=False)
        size = (pixels.shape[-1],) * 2
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=torch.float32,
                                          text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        x_t = ddpm_noising(pipe, x0, noise, t)
        out = pipe.unet(x_t, torch.tensor([t]), encoder_hidden_states=states,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        return x0, x_t, None, out
    if name == "sd3":
        sigma = flow_sigma_from_table(pipe, t)
        states, _, pooled, _ = pipe.encode_prompt([prompt], None, None, do_classifier_free_guidance=False)
        x_t = (1 - sigma) * x0 + sigma * noise
        timestep = pipe.scheduler.timesteps[pipe.scheduler.config.num_train_timesteps - 1 - t].reshape(1)
        out = pipe.transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=states,
                               pooled_projections=pooled).sample
        return x0, x_t, sigma, out
    if name == "flux":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        b, c, h, w = x0.shape
        mu = calculate_shift(h * w // 4)  # the pipeline's defaults = this scheduler's config
        sigma = float(pipe.scheduler.time_shift(mu, 1.0, torch.tensor((t + 1) / 1000, dtype=torch.float64)))
        states, pooled, text_ids = pipe.encode_prompt([prompt], None)
        x_t = (1 - sigma) * x0 + sigma * noise
        out = pipe.transformer(hidden_states=pipe._pack_latents(x_t, b, c, h, w), timestep=torch.tensor([sigma]),
                               guidance=torch.tensor([guidance]), pooled_projections=pooled,
                               encoder_hidden_states=states, txt_ids=text_ids,
                               img_ids=pipe._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)).sample
        return x0, x_t, sigma, pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                                    pipe.vae_scale_factor)
    if name == "pixart":
        states, mask, _, _ = pipe.encode_prompt([prompt], do_classifier_free_guidance=False)
        x_t = ddpm_noising(pipe, x0, noise, t)
        size = float(pixels.shape[-1])
        added = {"resolution": torch.tensor([[size, size]]), "aspect_ratio": torch.tensor([[1.0]])}
        out = pipe.transformer(x_t, encoder_hidden_states=states, encoder_attention_mask=mask, timestep=torch.tensor([t]),
                               added_cond_kwargs=added).sample
        return x0, x_t, None, out[:, :4]  # learned variance: mean channels
    if name == "dit":
        x_t = ddpm_noising(pipe, x0, noise, t)
        label = 1  # "goldfish" is ImageNet class 1
        out = pipe.transformer(x_t, timestep=torch.tensor([t]), class_labels=torch.tensor([label])).sample
        return x0, x_t, None, out[:, :4]
    states, _ = pipe.encode_prompt([prompt], do_classifier_free_guidance=False)  # IF stage I
    x_t = ddpm_noising(pipe, x0, noise, t)
    return x0, x_t, None, pipe.unet(x_t, torch.tensor([t]), encoder_hidden_states=states).sample[:, :3]


#: the objective each family is checked with (together they cover every error space)
OBJECTIVES = {"sdxl": "epsilon", "sd3": "velocity", "flux": "x0_snr", "pixart": "x0_heuristic", "dit": "epsilon",
              "if": "x0_snr"}


@pytest.mark.parametrize("name", FAMILIES)
def test_one_draw_equals_the_error_computed_from_the_pipelines_own_parts(name, family_folders):
    folder = family_folders[name]
    settings = ScorerSettings(**FIXED, draws=2, objective=OBJECTIVES[name], guidance=2.5,
                              resolution=16 if name == "flux" else None)
    backend = load_backend(folder, settings=settings)
    prompt = "goldfish" if name == "dit" else "a photo of a cat."
    pixels = torch.rand(1, 3, backend.resolution, backend.resolution, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scorer = DiffusionScorer(backend, settings)
    result = scorer.score(pixels, [[prompt]], image_keys=[42])[0]
    pipe = load_pipeline(name, folder)
    with torch.no_grad():
        for j in range(2):
            t = int(result.timesteps[j])
            x0_shape = latents(pipe, pixels).shape[1:] if name != "if" else pixels.shape[1:]
            noise = draw_noise(scorer.image_seed(42), j, tuple(x0_shape))[None]
            x0, x_t, sigma, out = hand_output(name, pipe, pixels, prompt, t, noise, guidance=2.5)
            if sigma is None:  # DDPM, epsilon prediction: eps_hat = out
                a = float(pipe.scheduler.alphas_cumprod[t])
                eps_hat, x0_hat, snr, unit = out, (x_t - math.sqrt(1 - a) * out) / math.sqrt(a), a / (1 - a), t / 1000
            else:  # flow: out = v = eps - x0
                eps_hat, x0_hat = x_t + (1 - sigma) * out, x_t - sigma * out
                snr, unit = ((1 - sigma) / sigma) ** 2, sigma
            expected = {"epsilon": (eps_hat - noise).pow(2).mean(),
                        "velocity": (eps_hat - x0_hat - (noise - x0)).pow(2).mean(),
                        "x0_snr": snr * (x0_hat - x0).pow(2).mean(),
                        "x0_heuristic": math.exp(-7 * unit) * (x0_hat - x0).pow(2).mean()}[settings.objective]
            assert float(result.per_draw[0, j]) == pytest.approx(float(expected), rel=2e-4, abs=1e-6), (name, j)


def test_every_family_through_the_clip_benchmark_cli(family_folders, tiny_wds, tmp_path):
    """One `clip_benchmark eval` process, five checkpoints (`--pretrained` takes several)."""
    names = ["sdxl", "sd3", "flux", "pixart", "if"]
    result = run_cli(["eval", "--model", "sd-diffusion", "--pretrained", *[family_folders[n] for n in names],
                      "--dataset", "wds/animals", "--dataset_root", tiny_wds, "--num_workers", "0", "--batch_size", "6",
                      "--diffusion_draws", "2", "--diffusion_strategy", "fixed", "--diffusion_templates",
                      "average_errors", "--diffusion_no_progress", "--diffusion_resolution", "16",
                      "--diffusion_guidance", "3.0", "--output", "{pretrained}.json"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    backends = {"sdxl": "sdxl", "sd3": "sd3", "flux": "flux", "pixart": "pixart", "if": "deepfloyd-if"}
    for name in names:
        slug = family_folders[name].strip("/").replace("/", "_")
        metrics = json.loads((tmp_path / f"{slug}.json").read_text())["metrics"]
        lines = [json.loads(line) for line in (tmp_path / f"{slug}.diffusion.jsonl").open()]
        header, images = lines[0], lines[1:-1]
        assert header["model"]["backend"] == backends[name] and header["model"]["resolution"] == 16
        assert len(images) == 6 and all(len(image["errors"]) == 3 and image["calls"] == 12 for image in images)
        correct = sum(image["prediction"] == label for image, label in zip(images, lines[-1]["labels"]))
        assert metrics["acc1"] == pytest.approx(correct / 6)
    flux = json.loads(open(tmp_path / (family_folders["flux"].strip("/").replace("/", "_") + ".diffusion.jsonl")).readline())
    assert flux["model"]["guidance"] == 3.0 and flux["model"]["process"] == "flow"
    assert flux["model"]["mu"] == pytest.approx(0.5 + 0.65 / 3840 * (16 - 256))  # 16 image tokens at 16 px


def test_dit_through_the_cli_on_imagenet_names_and_one_error_elsewhere(family_folders, tiny_wds, tmp_path, capsys,
                                                                        monkeypatch):
    root = write_wds_dataset(str(tmp_path / "imagenet"), ["tench", "goldfish", "great white shark"],
                             ["a photo of a {c}.", "itap of a {c}."], num_images=3)
    result = run_cli(["eval", "--model", "sd-diffusion", "--pretrained", family_folders["dit"], "--dataset",
                      "wds/imagenet1k", "--dataset_root", root, "--num_workers", "0", "--batch_size", "3",
                      "--diffusion_draws", "2", "--diffusion_no_progress", "--output", "dit.json"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("templates do not apply") == 1  # said once
    lines = [json.loads(line) for line in (tmp_path / "dit.diffusion.jsonl").open()]
    assert lines[0]["model"]["backend"] == "dit" and len(lines) == 5
    message = in_process_error(["eval", "--model", "sd-diffusion", "--pretrained", family_folders["dit"], "--dataset",
                                "wds/animals", "--dataset_root", tiny_wds, "--num_workers", "0", "--diffusion_draws",
                                "2", "--diffusion_no_progress", "--output", "animals.json"], tmp_path, capsys,
                               monkeypatch)
    assert "'a photo of a cat.'" in message and "imagenet1k" in message
    assert not (tmp_path / "animals.json").exists()


def test_sd3_runs_without_t5_saved_or_dropped(family_folders, tmp_path):
    folder = str(tmp_path / "sd3-no-t5")
    shutil.copytree(family_folders["sd3"], folder)
    shutil.rmtree(os.path.join(folder, "text_encoder_3"))
    with pytest.raises(CheckpointError, match="text_encoder_3"):
        locate(folder)
    dropped = load_backend(folder, settings=ScorerSettings(**FIXED, drop_t5=True))
    assert dropped.description["t5"] is False
    states = dropped.encode_prompts(["a photo of a cat."]).states
    assert states.shape[1] == tiny_families.CLIP_LENGTH + 256 and bool((states[:, tiny_families.CLIP_LENGTH:] == 0).all())
    saved = load_backend(tiny_families.build_sd3(str(tmp_path / "saved-no-t5"), with_t5=False))
    assert saved.description["t5"] is False
    full = load_backend(family_folders["sd3"])
    assert full.description["t5"] and not bool((full.encode_prompts(["a cat."]).states[:, 16:] == 0).all())


def test_hub_download_fetches_exactly_the_familys_parts(family_folders, monkeypatch):
    import huggingface_hub

    from clip_benchmark_diffusion import checkpoints

    asked = {}
    name_of = {"owner/sdxl": "sdxl", "owner/sd3": "sd3", "owner/flux": "flux"}
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename, **kw: os.path.join(family_folders[name_of[repo]], filename))

    def snapshot(repo, allow_patterns, **kwargs):
        asked[repo] = sorted(allow_patterns)
        return family_folders[name_of[repo]]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    locate("owner/sdxl")
    locate("owner/sd3", settings=ScorerSettings(**FIXED, drop_t5=True))
    locate("owner/flux")
    assert "text_encoder_2/*" in asked["owner/sdxl"] and "unet/*" in asked["owner/sdxl"]
    assert "transformer/*" in asked["owner/sd3"] and "text_encoder_3/*" not in asked["owner/sd3"]
    assert asked["owner/flux"] == sorted(checkpoints.hub_patterns(
        ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "scheduler")))


def test_families_are_imported_only_when_used():
    code = ("import sys; from clip_benchmark_diffusion.backends import backend_for_pipeline; "
            "backend_for_pipeline('StableDiffusionPipeline'); "
            "print(sorted(m for m in sys.modules if m.startswith(('clip_benchmark_diffusion.backends.', 'diffusers'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    modules = json.loads(loaded.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert "clip_benchmark_diffusion.backends.stable_diffusion" in modules
    assert not any(m.rsplit(".", 1)[-1] in ("sdxl", "sd3", "flux", "pixart", "dit", "deepfloyd_if") for m in modules)
    assert "diffusers" not in modules  # nor diffusers itself until a checkpoint is loaded


def test_flow_defaults_to_bfloat16_and_unet_families_to_float16_on_cuda():
    from clip_benchmark_diffusion.backends import backend_for_pipeline
    from clip_benchmark_diffusion.checkpoints import resolve_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for name, expected in [("FluxPipeline", torch.bfloat16), ("StableDiffusion3Pipeline", torch.bfloat16),
                           ("PixArtSigmaPipeline", torch.bfloat16), ("IFPipeline", torch.bfloat16),
                           ("StableDiffusionXLPipeline", torch.float16), ("DiTPipeline", torch.float16),
                           ("StableDiffusionPipeline", torch.float16)]:
        assert resolve_dtype("auto", cuda, backend_for_pipeline(name)) == expected, name
        assert resolve_dtype("auto", cpu, backend_for_pipeline(name)) == torch.float32


@pytest.mark.parametrize("family, flags, expected", [
    ("sdxl", ["--diffusion_sigma_distribution", "uniform"], "applies to flow-matching models only"),
    ("flux", ["--diffusion_no_t5"], "--diffusion_no_t5 applies to SD3/SD3.5 only"),
])
def test_settings_a_family_cannot_use_stop_before_any_compute(family_folders, tiny_wds, tmp_path, capsys, monkeypatch,
                                                              family, flags, expected):
    message = in_process_error(["eval", "--model", "sd-diffusion", "--pretrained", family_folders[family], "--dataset",
                                "wds/animals", "--dataset_root", tiny_wds, "--diffusion_no_progress", *flags],
                               tmp_path, capsys, monkeypatch)
    assert expected in message and not list(tmp_path.glob("*.json*"))


#: the families added for issue 24, with the pixel size they are scored at here and their record's backend name
NEW_FAMILIES = {"qwenimage": (32, "qwen-image"), "flux2": (16, "flux2"), "flux2-klein": (16, "flux2-klein"),
                "z-image": (16, "z-image"), "sana": (32, "sana"), "lumina2": (32, "lumina2"),
                "hidream": (32, "hidream"), "chroma": (16, "chroma"), "cogview4": (16, "cogview4"),
                "hunyuanimage": (16, "hunyuan-image")}


def test_new_families_through_the_clip_benchmark_cli(family_folders, tiny_wds, tmp_path):
    """One `clip_benchmark eval` process per pixel size, every new family's tiny checkpoint in it."""
    for size in sorted({size for size, _ in NEW_FAMILIES.values()}):
        names = [name for name, (s, _) in NEW_FAMILIES.items() if s == size]
        result = run_cli(["eval", "--model", "sd-diffusion", "--pretrained", *[family_folders[n] for n in names],
                          "--dataset", "wds/animals", "--dataset_root", tiny_wds, "--num_workers", "0",
                          "--batch_size", "6", "--diffusion_draws", "2", "--diffusion_strategy", "fixed",
                          "--diffusion_templates", "average_errors", "--diffusion_no_progress",
                          "--diffusion_resolution", str(size), "--output", "{pretrained}.json"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        for name in names:
            slug = family_folders[name].strip("/").replace("/", "_")
            metrics = json.loads((tmp_path / f"{slug}.json").read_text())["metrics"]
            lines = [json.loads(line) for line in (tmp_path / f"{slug}.diffusion.jsonl").open()]
            header, images = lines[0], lines[1:-1]
            assert header["model"]["backend"] == NEW_FAMILIES[name][1] and header["model"]["resolution"] == size
            assert len(images) == 6 and all(len(image["errors"]) == 3 and image["calls"] == 12 for image in images)
            correct = sum(image["prediction"] == label for image, label in zip(images, lines[-1]["labels"]))
            assert metrics["acc1"] == pytest.approx(correct / 6)


@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux", "pixart", "if", *NEW_FAMILIES])
def test_text_encoders_hold_no_accelerator_memory_while_the_denoiser_runs(name, family_folders, tiny_wds, tmp_path,
                                                                          monkeypatch):
    """Through the CLI (in this process): every prompt is encoded before the first denoiser call, and
    from then on the text encoders are off the device. Released to the meta device here, so the
    check holds on a CPU-only machine: a released encoder then holds no memory at all, and the run
    still completes."""
    from clip_benchmark_diffusion.__main__ import main
    from clip_benchmark_diffusion.backends.pipeline_backend import PipelineBackend

    events = []
    encode_prompts, predict = PipelineBackend.encode_prompts, PipelineBackend.predict
    monkeypatch.setattr(PipelineBackend, "release_device", "meta")
    monkeypatch.setattr(PipelineBackend, "encode_prompts",
                        lambda self, prompts: events.append(("encode", None)) or encode_prompts(self, prompts))

    def recorded_predict(self, *args):
        output = predict(self, *args)  # the first call releases the encoders before the denoiser runs
        devices = {p.device.type for module in self.text_encoders().values() for p in module.parameters()}
        events.append(("predict", (devices, next(self.denoiser.parameters()).device.type)))
        return output

    monkeypatch.setattr(PipelineBackend, "predict", recorded_predict)
    monkeypatch.chdir(tmp_path)
    size = NEW_FAMILIES.get(name, (16,))[0]
    main(["eval", "--model", "sd-diffusion", "--pretrained", family_folders[name], "--dataset", "wds/animals",
          "--dataset_root", tiny_wds, "--num_workers", "0", "--batch_size", "6", "--diffusion_draws", "2",
          "--diffusion_strategy", "fixed", "--diffusion_no_progress", "--diffusion_resolution", str(size),
          "--output", "out.json"])
    kinds = [kind for kind, _ in events]
    assert "predict" in kinds and "encode" not in kinds[kinds.index("predict"):]
    assert all(state == ({"meta"}, "cpu") for kind, state in events if kind == "predict")
    assert json.loads((tmp_path / "out.json").read_text())["metrics"]["acc1"] >= 0


def test_a_prompt_after_scoring_began_brings_the_text_encoders_back_for_good(family_folders, monkeypatch):
    """Caption selection encodes prompts per batch: the encoders return to the device once and stay
    (no round trip per batch)."""
    from clip_benchmark_diffusion.backends.pipeline_backend import PipelineBackend

    backend = load_backend(family_folders["sd3"], settings=ScorerSettings(**FIXED))
    moves = []
    monkeypatch.setattr(PipelineBackend, "release_device", "cpu")
    for module in backend.text_encoders().values():
        original = module.to
        monkeypatch.setattr(module, "to", lambda *a, _to=original, **k: moves.append(a[:1]) or _to(*a, **k))
    first = backend.encode_prompts(["a cat."])
    x0 = backend.encode_images(torch.zeros(1, 3, backend.resolution, backend.resolution))
    sigma = torch.tensor([0.5], dtype=torch.float64)
    backend.predict(x0, sigma, first)
    assert backend.scoring and not backend.keep_text_encoders and moves == [("cpu",)] * 3  # released once
    again = backend.encode_prompts(["a cat."])
    assert backend.keep_text_encoders and moves[3:] == [(backend.device,)] * 3 and torch.equal(again.states,
                                                                                               first.states)
    backend.predict(x0, sigma, again)
    backend.encode_prompts(["a dog."])
    assert len(moves) == 6  # neither released nor moved again
