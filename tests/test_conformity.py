"""Each family against its own diffusers pipeline: the pipeline's `__call__` is run to its first
denoiser call at the plugin's x_t and noise level, and every argument the denoiser receives from the
plugin must equal the pipeline's (same values, same dtype); the plugin's per-draw error must equal
the one recomputed from the denoiser's output on the pipeline's arguments, with the pipeline's own
scheduler noising the clean sample. In float32 and bfloat16, on tiny random pipelines."""
from __future__ import annotations

import contextlib
import functools
import inspect
import math

import pytest
import torch

import tiny_families
from clip_benchmark_diffusion.checkpoints import load_backend
from clip_benchmark_diffusion.objectives import draw_noise
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from presets import FIXED
from tiny_sd import build_tiny_pipeline

#: family -> (builder, its keyword arguments)
BUILDS = {"sd": (build_tiny_pipeline, {}), "pixart-sigma": (tiny_families.build_pixart, {"sigma": True}),
          **{name: (build, {}) for name, build in tiny_families.BUILDERS.items()}}
FAMILIES = list(BUILDS)
#: arguments that say how to return, not what to compute
IGNORED = {"return_dict"}
GUIDANCE = 2.5
#: flow-matching families (the rest are DDPM)
#: pixel size scored, where the family's native one is large
RESOLUTION = {"qwenimage": 32, "flux2": 16, "flux2-klein": 16, "z-image": 16, "sana": 32, "lumina2": 32, "hidream": 32,
              "chroma": 16, "cogview4": 16, "hunyuanimage": 16}
FLOW = {"sd3", "flux", "qwenimage", "flux2", "flux2-klein", "z-image", "sana", "lumina2", "hidream", "chroma",
        "cogview4", "hunyuanimage"}
#: families whose denoiser predicts x0 - noise (the pipeline negates it)
NEGATED = {"lumina2", "hidream"}
#: arguments whose batch is not their first dimension: -> that dimension
BATCH_DIM = {"encoder_hidden_states_llama3": 1}
#: flow families sampled with DPM-Solver in flow mode (int64 timesteps, `add_noise` instead of `scale_noise`)
DPM_FLOW = {"sana"}
#: families whose denoiser takes a list of per-image samples (C, 1, H, W) and negates time and output
LISTS = {"z-image"}
#: families whose denoiser takes packed latent tokens
PACKED = {"flux", "qwenimage", "flux2", "flux2-klein", "chroma"}
#: families whose pipeline takes `latents` unpacked (it packs them itself)
PACKS_ITSELF = {"flux2", "flux2-klein"}
#: families whose pipeline rescales the injected sample before the denoiser (Euler's x0 + s eps
#: divided by sqrt(s^2 + 1)): in bfloat16 that round trip rounds x_t by up to one bfloat16 step
ROUND_TRIP = {"sdxl"}


def argument_tolerance(family: str, argument: str, sample_name: str, dtype: torch.dtype) -> float:
    """float32: 1e-5 (summation order); bfloat16: bit for bit, except the sample of a round-trip family."""
    if dtype == torch.float32:
        return 1e-5
    return 8e-3 if family in ROUND_TRIP and argument == sample_name else 0.0


class Stop(Exception):
    """Raised by the pre-hook: the pipeline's first denoiser call has been seen."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("conformity")
    return {name: build(str(root / name), **kwargs) for name, (build, kwargs) in BUILDS.items()}


def bound_arguments(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """A denoiser call's arguments by parameter name, defaults filled in."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.update(arguments.pop("kwargs", {}) or {})
    return {k: v for k, v in arguments.items() if k not in IGNORED}


@contextlib.contextmanager
def recording(module: torch.nn.Module, stop: bool):
    """Every call's (args, kwargs) of `module`; with `stop`, the first call raises `Stop` instead of running."""
    calls = []

    def hook(_, args, kwargs):
        calls.append((args, kwargs))
        if stop:
            raise Stop

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def injected_flow(scheduler, sigma: float):
    """`set_timesteps` as the pipeline calls it, then the schedule replaced by one step at the plugin's
    sigma: the scheduler's own float32 sigma, timestep = sigma * num_train_timesteps (as it computes them)."""
    original = scheduler.set_timesteps

    @functools.wraps(original)  # pipelines inspect its signature
    def set_timesteps(*args, **kwargs):
        original(*args, **kwargs)
        sigmas = torch.tensor([sigma], dtype=torch.float32)
        scheduler.timesteps = sigmas * scheduler.config.num_train_timesteps
        scheduler.sigmas = torch.cat([sigmas, torch.zeros(1)])
        scheduler.num_inference_steps = 1

    scheduler.set_timesteps = set_timesteps
    return original


def injected_dpm_flow(scheduler, sigma: float):
    """DPM-Solver in flow mode: one step at the plugin's sigma, its timestep 1000 sigma truncated to
    int64 (as `set_timesteps` stores it)."""
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        original(*args, **kwargs)
        scheduler.timesteps = (torch.tensor([sigma], dtype=torch.float64) * scheduler.config.num_train_timesteps).to(
            torch.int64)
        scheduler.sigmas = torch.tensor([sigma, 0.0])
        scheduler.num_inference_steps = 1

    scheduler.set_timesteps = set_timesteps
    return original


def injected_discrete(scheduler, t: int):
    """`set_timesteps`, then its timesteps replaced by the plugin's t (in the scheduler's own dtype)."""
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        original(*args, **kwargs)
        scheduler.timesteps = torch.tensor([t], dtype=scheduler.timesteps.dtype)
        scheduler.num_inference_steps = 1

    scheduler.set_timesteps = set_timesteps
    return original


def assert_same(name: str, ours, theirs, row: int, batch: int, tolerance: float) -> None:
    """Plugin argument (a batch of `batch` rows, this draw is `row`) against the pipeline's (one row);
    floats within `tolerance` (relative and absolute; 0: bit for bit)."""
    if isinstance(ours, dict) or isinstance(theirs, dict):
        ours, theirs = ours or {}, theirs or {}
        assert set(ours) == set(theirs), (name, set(ours), set(theirs))
        for key in ours:
            assert_same(f"{name}.{key}", ours[key], theirs[key], row, batch, tolerance)
        return
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)) and not torch.is_tensor(ours):
        # a per-row list (variable-length states, per-image shapes): this draw's entry against the pipeline's one
        if len(ours) == batch and len(theirs) == 1 and batch > 1:
            ours = [ours[row]]
        assert len(ours) == len(theirs), name
        for a, b in zip(ours, theirs):
            assert_same(name, a, b, 0, 1, tolerance)
        return
    if not torch.is_tensor(ours) or not torch.is_tensor(theirs):
        assert ours == theirs, (name, ours, theirs)
        return
    assert ours.dtype == theirs.dtype, (name, ours.dtype, theirs.dtype)
    if ours.dim() > 0 and ours.shape[0] == batch and batch > 1 and (theirs.dim() == 0 or theirs.shape[0] == 1):
        ours = ours[row:row + 1]
    if theirs.dim() == 0 and ours.dim() == 1:
        theirs = theirs.reshape(1)  # a scalar timestep broadcast over the batch
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    if ours.is_floating_point() and tolerance > 0:
        assert torch.allclose(ours.float(), theirs.float(), rtol=tolerance, atol=tolerance), \
            (name, (ours.float() - theirs.float()).abs().max())
    else:
        assert torch.equal(ours, theirs), name


# ---------------------------------------------------------------- per family: the pipeline's side
def run_pipeline(name: str, backend, pipe, prompt: str, x_t: torch.Tensor, t: int, sigma: float, size: int,
                 monkeypatch) -> None:
    """The family's text-to-image `__call__` with the plugin's x_t and noise level; stops at the first
    denoiser call (`Stop`). Defaults everywhere except what fixes the noise level, the sample and
    the guidance (no classifier-free batch)."""
    common = dict(num_inference_steps=1, output_type="latent")
    if name == "cogview4":  # integer timesteps; its own scheduler shifts sigma = t / 1000 (linear, by resolution)
        pipe(prompt=prompt, height=size, width=size, latents=x_t, timesteps=[t + 1], guidance_scale=1.0, **common)
    elif name in FLOW:
        (injected_dpm_flow if name in DPM_FLOW else injected_flow)(pipe.scheduler, sigma)
        extra = {"sd3": {"guidance_scale": 1.0}, "flux": {"guidance_scale": GUIDANCE},
                 "z-image": {"guidance_scale": 0.0},
                 "sana": {"guidance_scale": 1.0, "use_resolution_binning": False},
                 "lumina2": {"guidance_scale": 1.0}, "hidream": {"guidance_scale": 1.0},
                 "chroma": {"guidance_scale": 1.0},
                 "flux2": {"guidance_scale": GUIDANCE}, "flux2-klein": {"guidance_scale": 1.0}}.get(name, {})
        if name in PACKS_ITSELF:
            x_t = pipe._unpack_latents_with_ids(x_t, pipe._prepare_latent_ids(x_t.new_empty(
                1, 1, size // pipe.vae_scale_factor // 2, size // pipe.vae_scale_factor // 2)))
        pipe(prompt=prompt, height=size, width=size, latents=x_t, **common, **extra)
    elif name == "sdxl":
        from diffusers import EulerDiscreteScheduler

        # Euler's sample is x0 + s eps (s = sqrt((1 - abar) / abar)); `scale_model_input` divides by sqrt(s^2 + 1)
        probe = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        probe.set_timesteps(timesteps=[t])
        latents = x_t * (probe.sigmas[0] ** 2 + 1).sqrt() / probe.init_noise_sigma
        pipe(prompt, height=size, width=size, latents=latents, timesteps=[t], guidance_scale=1.0, **common)
    elif name in ("sd", "pixart", "pixart-sigma"):
        injected_discrete(pipe.scheduler, t)
        extra = {"use_resolution_binning": False} if name.startswith("pixart") else {}
        pipe(prompt, height=size, width=size, latents=x_t, guidance_scale=1.0, **common, **extra)
    elif name in ("dit", "if"):
        import diffusers.pipelines.deepfloyd_if.pipeline_if as if_module
        import diffusers.pipelines.dit.pipeline_dit as dit_module

        monkeypatch.setattr(dit_module if name == "dit" else if_module, "randn_tensor", lambda *a, **k: x_t.clone())
        injected_discrete(pipe.scheduler, t)
        if name == "dit":
            pipe(class_labels=[1], guidance_scale=1.0, num_inference_steps=1, output_type="np")
        else:
            pipe(prompt, guidance_scale=1.0, num_inference_steps=1, output_type="pt")
    else:
        raise AssertionError(name)


def pipeline_x0(name: str, pipe, pixels: torch.Tensor) -> torch.Tensor:
    """The clean sample in the pipeline's space: the inverse of its decoding (posterior mean)."""
    if name == "if":
        return pixels
    vae = pipe.vae
    if name in ("flux2", "flux2-klein"):  # patchified 2x2, normalised with the VAE's batch-norm statistics
        z = pipe._patchify_latents(vae.encode(pixels.to(vae.dtype)).latent_dist.mode().float())
        mean, var = vae.bn.running_mean.view(1, -1, 1, 1).float(), vae.bn.running_var.view(1, -1, 1, 1).float()
        return (z - mean) / torch.sqrt(var + vae.config.batch_norm_eps)
    if name == "cogview4":  # its decoding divides by the scaling factor only
        return vae.encode(pixels.to(vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor
    if name == "sana":  # the deep-compression autoencoder: a deterministic latent
        return vae.encode(pixels.to(vae.dtype)).latent.float() * vae.config.scaling_factor
    if name == "qwenimage":  # a video VAE (one frame), normalised per channel
        z = vae.encode(pixels.to(vae.dtype)[:, :, None]).latent_dist.mean[:, :, 0].float()
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        return (z - mean) / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    z = vae.encode(pixels.to(vae.dtype)).latent_dist.mean.float()
    return (z - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor


def pipeline_noised(name: str, pipe, x0: torch.Tensor, noise: torch.Tensor, t: int, sigma: float) -> torch.Tensor:
    """x_t by the pipeline's scheduler (its state after the stopped call: one step at the plugin's level)."""
    scheduler = pipe.scheduler
    if name in DPM_FLOW:
        return scheduler.add_noise(x0, noise, scheduler.timesteps[:1])
    if name in FLOW:
        return scheduler.scale_noise(x0, scheduler.timesteps[:1], noise)
    if name == "sdxl":
        noised = scheduler.add_noise(x0, noise, scheduler.timesteps[:1])
        return scheduler.scale_model_input(noised, scheduler.timesteps[0])
    if name.startswith("pixart"):  # DPM-Solver's add_noise reads its sampling sigmas: the training table instead
        alpha_bar = scheduler.alphas_cumprod[t].float()
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    return scheduler.add_noise(x0, noise, torch.tensor([t]))


def pipeline_output(name: str, pipe, output: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The denoiser's output in the schedule's space (eps, or the flow velocity), as the pipeline reads it."""
    if name in NEGATED:
        return -output
    if name in LISTS:
        return -torch.stack([o.float() for o in output]).squeeze(2)
    if name in PACKS_ITSELF:
        return pipe._unpack_latents_with_ids(output[:, :x0.shape[-1] * x0.shape[-2]], pipe._prepare_latent_ids(x0))
    if name in PACKED:
        size = x0.shape[-1] * pipe.vae_scale_factor
        unpacked = pipe._unpack_latents(output, size, size, pipe.vae_scale_factor)
        return unpacked[:, :, 0] if unpacked.dim() == 5 else unpacked
    return output[:, :x0.shape[1]]  # learned variance (PixArt, DiT, IF): the first channels are the mean


def conformity(name: str, folder: str, dtype: torch.dtype, monkeypatch) -> None:
    flow = name in FLOW
    settings = ScorerSettings(**FIXED, draws=2, objective="velocity" if flow else "epsilon", guidance=GUIDANCE,
                              resolution=RESOLUTION.get(name))
    backend = load_backend(folder, dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype],
                           settings=settings)
    denoiser = backend.denoiser
    prompt = "goldfish" if name == "dit" else "a photo of a Cat & a kite (bird of prey)."
    size = backend.resolution
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scorer = DiffusionScorer(backend, settings)
    with recording(denoiser, stop=False) as calls:
        result = scorer.score(pixels, [[prompt]], image_keys=[42])[0]
    assert len(calls) == 1  # both draws in one pass
    ours = bound_arguments(denoiser, *calls[0])
    pipe = backend.pipe
    if name == "hidream":  # its pipeline always generates at the area of its default size: make that ours
        pipe.default_sample_size = size // pipe.vae_scale_factor
    with torch.no_grad():
        x0 = pipeline_x0(name, pipe, pixels)
        close = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(x0, backend.encode_images(pixels), rtol=close, atol=close)
        sample_name = next(iter(ours))  # the first parameter: x_t
        for j in range(2):
            t = int(result.timesteps[j])
            sigma = float(scorer.schedule.sigmas(torch.tensor([t]))[0]) if flow else math.nan
            x_t = ours[sample_name][j].squeeze(1)[None] if name in LISTS else ours[sample_name][j:j + 1]
            original = pipe.scheduler.set_timesteps
            with recording(denoiser, stop=True) as seen, pytest.raises(Stop):
                run_pipeline(name, backend, pipe, prompt, x_t, t, sigma, size, monkeypatch)
            pipe.scheduler.set_timesteps = original
            theirs = bound_arguments(denoiser, *seen[0])
            assert set(ours) == set(theirs)
            for key in ours:
                mine, pipelines = ours[key], theirs[key]
                if key in BATCH_DIM and torch.is_tensor(mine):
                    mine, pipelines = mine.movedim(BATCH_DIM[key], 0), pipelines.movedim(BATCH_DIM[key], 0)
                assert_same(key, mine, pipelines, j, 2, argument_tolerance(name, key, sample_name, dtype))
            # the per-draw error, from the denoiser's output on the pipeline's own arguments
            noise = draw_noise(scorer.image_seed(42), j, tuple(x0.shape[1:]))[None]
            noised = pipeline_noised(name, pipe, x0, noise, t, sigma)
            plugin_x_t = pipeline_output(name, pipe, x_t, x0) if name in PACKED else x_t
            assert torch.allclose(noised.to(dtype).float(), plugin_x_t.float(), rtol=close, atol=close)
            output = denoiser(**theirs)
            output = pipeline_output(name, pipe, output[0] if isinstance(output, tuple) else output.sample, x0).float()
            target = noise - x0 if flow else noise
            expected = float((output - target).pow(2).mean())
            # bfloat16: the arguments are equal bit for bit; the output of a batch of 2 and of 1 row can
            # still differ in the last bits (up to 0.2% of the error seen here, HunyuanImage)
            tolerance = 1e-5 if dtype == torch.float32 else 1e-2 if name in ROUND_TRIP else 5e-3
            assert float(result.per_draw[0, j]) == pytest.approx(expected, rel=tolerance), (name, j)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_the_plugin_calls_the_denoiser_as_the_pipeline_does(name, dtype, folders, monkeypatch):
    conformity(name, folders[name], dtype, monkeypatch)


@pytest.mark.parametrize("name", ["qwenimage", "z-image", "cogview4"])
def test_a_prompt_scores_the_same_beside_longer_prompts(name, folders):
    """Families whose text states are as long as each prompt: rows are padded to the longest prompt
    of all (and a pass cut to its longest); the mask keeps a row's output what it is alone."""
    from clip_benchmark_diffusion.backends.base import Conditioning

    backend = load_backend(folders[name], dtype="float32", settings=ScorerSettings(resolution=RESOLUTION[name]))
    size = backend.resolution
    x0 = backend.encode_images(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    sigma = torch.tensor([0.6], dtype=torch.float64)
    short = backend.encode_prompts(["a cat."])
    long = backend.encode_prompts([" ".join(["a photo of many small dogs and birds."] * 3)])
    assert long.states.shape[1] > short.states.shape[1]
    alone = backend.predict(x0, sigma, short)
    beside = backend.predict(x0.repeat(2, 1, 1, 1), sigma.repeat(2),
                             Conditioning.stack(short.rows() + long.rows()))
    assert torch.allclose(alone[0], beside[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(beside[0], beside[1], rtol=1e-3, atol=1e-3)


# DiT: class labels, one size. Sana: its `__call__` asks for 1024 pixels and bins that by the transformer's
# sample size (to sample_size x 32 for the released models; the tiny test model's size has no bin).
@pytest.mark.parametrize("name", [name for name in FAMILIES if name not in ("dit", "sana")])
def test_the_native_resolution_is_the_size_the_pipeline_generates_by_default(name, folders, monkeypatch):
    """With no `--diffusion_resolution` a family scores at the pixel size its own pipeline generates
    when given no height or width (read where the pipeline sizes its first latents)."""
    backend = load_backend(folders[name], dtype="float32", settings=ScorerSettings())
    pipe = backend.pipe
    sizing = "prepare_intermediate_images" if name == "if" else "prepare_latents"
    original, seen = getattr(pipe, sizing), {}

    def stop(*args, **kwargs):
        seen.update(inspect.signature(original).bind(*args, **kwargs).arguments)
        raise Stop

    monkeypatch.setattr(pipe, sizing, stop)
    extra = {"use_resolution_binning": False} if name.startswith("pixart") else {}
    if "guidance_scale" in inspect.signature(pipe.__call__).parameters:
        extra["guidance_scale"] = 1.0  # no classifier-free batch (CogView4's empty negative prompt cannot encode)
    with torch.no_grad(), pytest.raises(Stop):
        pipe(prompt="a photo of a cat.", num_inference_steps=1, output_type="latent", **extra)
    assert (seen["height"], seen["width"]) == (backend.native_resolution(),) * 2 == (backend.resolution,) * 2
