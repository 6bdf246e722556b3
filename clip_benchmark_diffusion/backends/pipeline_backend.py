"""What every family shares: a diffusers pipeline object as the source of truth.

Each family loads its own diffusers pipeline class (so prompts are encoded by the pipeline's own
`encode_prompt`, latents packed by its own helpers) and keeps only what scoring needs: the
denoiser, the encoders and the noise schedule. This base does the common parts: loading, moving to
the device, VAE encoding with the checkpoint's scaling and shift, the description record, the noise
schedule (DDPM from the scheduler's betas, or flow matching with its shift), the timestep the
scheduler would hand the network, and memory: the text encoders leave the device when scoring
starts and the denoiser joins it then, so the two never share it.
Families are checked argument by argument against their own pipeline's `__call__` in
`tests/test_conformity.py` (see docs/families.md).
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar, Optional, Sequence

import torch

from ..schedules import DiscreteSchedule, FlowSchedule, NoiseSchedule
from .base import Conditioning, DiffusionBackend, LoadSettings
from .speed import SpeedOptions, prepare_denoiser, run_denoiser

LOG = logging.getLogger(__name__)


def cleans_captions() -> bool:
    """What `clean_caption=True` (the PixArt and IF pipelines' default) does here: it cleans only
    when bs4 and ftfy are installed, and otherwise falls back to lower-casing (with a warning per
    call). Passing this value does the same without the warnings."""
    from diffusers.utils import is_bs4_available, is_ftfy_available

    return bool(is_bs4_available() and is_ftfy_available())


def text_rows(states: list[torch.Tensor]) -> Conditioning:
    """Per-prompt states of different lengths as a batch: zero-padded, with the mask of real tokens."""
    length = max(len(s) for s in states)
    padded = torch.zeros((len(states), length, states[0].shape[-1]), dtype=states[0].dtype)
    mask = torch.zeros((len(states), length), dtype=torch.int64)
    for row, s in enumerate(states):
        padded[row, :len(s)] = s.cpu()
        mask[row, :len(s)] = 1
    return Conditioning(states=padded, mask=mask)


def text_list(c: Conditioning) -> list[torch.Tensor]:
    """The per-prompt states a list-taking denoiser receives: each row cut to its own length."""
    return [states[:length] for states, length in zip(c.states, c.mask.sum(dim=1).tolist())]


def text_length(default: int, tokenizer: Any) -> int:
    """Tokens to pad a prompt to: the pipeline's default `max_sequence_length`, unless the checkpoint's
    tokenizer declares a shorter `model_max_length` (a model trained on shorter text, like this
    package's reference flow model at 16 tokens; every public T5 tokenizer declares 512, so public
    checkpoints get the pipeline's default)."""
    return default if tokenizer is None else min(default, int(tokenizer.model_max_length))


class PipelineBackend(DiffusionBackend):
    """A family backed by one diffusers pipeline class (`diffusers_class`)."""

    #: name of the diffusers pipeline class to load the folder with
    diffusers_class: ClassVar[str]
    #: "unet" or "transformer": the pipeline attribute holding the denoiser
    denoiser_name: ClassVar[str] = "transformer"
    #: short family name recorded with every run
    family: ClassVar[str]
    #: families whose text encoder is T5 (overflows in float16)
    uses_t5: ClassVar[bool] = False
    #: whether a float16 VAE whose config asks for it (`force_upcast`, SDXL's) encodes in float32
    upcasts_vae: ClassVar[bool] = True
    #: whether the trained size is the pipeline's `default_sample_size` (its own default, FLUX's 128
    #: latent pixels) rather than the denoiser config's `sample_size`
    size_from_pipeline: ClassVar[bool] = False

    def __init__(self, source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 local_files_only: bool = False, cache_dir: Optional[str] = None,
                 speed: SpeedOptions = SpeedOptions(), load: Optional[LoadSettings] = None) -> None:
        import diffusers

        self.device = torch.device(device)
        self.dtype = dtype
        self.speed = speed
        self.load_settings = load or LoadSettings()
        self.source = str(source)
        pipeline_class = getattr(diffusers, self.diffusers_class)
        self.pipe = pipeline_class.from_pretrained(source, torch_dtype=dtype, local_files_only=local_files_only,
                                                   cache_dir=cache_dir, **self.load_overrides())
        for name, module in self.pipe.components.items():
            if isinstance(module, torch.nn.Module):
                # the denoiser joins the accelerator when scoring starts, after the text encoders left it
                module.to("cpu" if name == self.denoiser_name else self.device).eval().requires_grad_(False)
                if dtype == torch.float16 and type(module).__name__.startswith("T5"):
                    module.to(torch.bfloat16)  # T5 overflows in float16; its states are cast back per pass
        vae = getattr(self.pipe, "vae", None)
        if vae is not None and dtype == torch.float16 and self.upcasts_vae and vae.config.get("force_upcast", False):
            vae.to(torch.float32)  # the fp16 VAE of SDXL overflows: encode in float32
        self.denoiser = getattr(self.pipe, self.denoiser_name)
        self._denoiser = prepare_denoiser(self.denoiser, speed)
        self.scoring = False  # the denoiser has been called: it is on the device, the text encoders are not
        self.keep_text_encoders = False  # prompts came after scoring began: the encoders stay on the device
        self.resolution = int(self.load_settings.resolution or self.native_resolution())
        self.noise_process = self.build_noise_process()
        self.timestep_dtype = self.scheduler_timestep_dtype()
        self.description = {
            "backend": self.family,
            "source": self.source,
            "pipeline": self.diffusers_class,
            "resolution": self.resolution,
            "dtype": str(dtype).replace("torch.", ""),
            "denoiser_parameters": sum(p.numel() for p in self.denoiser.parameters()),
            "channels_last": speed.channels_last,
            "compile": speed.compile_mode,
            **self.noise_process.describe(),
            **self.describe_extra(),
        }

    # ---------------------------------------------------------------- hooks for the families
    def load_overrides(self) -> dict[str, Any]:
        """Extra keyword arguments of `from_pretrained` (components to leave out)."""
        return {}

    def native_resolution(self) -> int:
        """Pixel size the model was trained at (the size its pipeline generates by default)."""
        size = self.pipe.default_sample_size if self.size_from_pipeline else self.denoiser.config.sample_size
        return int(size) * self.vae_scale_factor

    def describe_extra(self) -> dict[str, Any]:
        """Family-specific entries of the run record's model description."""
        return {}

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: the pipeline's own figure when it has one (newer VAEs describe their
        downsampling differently), else the classic VAE's 2^(blocks - 1)."""
        factor = getattr(self.pipe, "vae_scale_factor", None)
        return int(factor) if factor else 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @classmethod
    def auto_dtype(cls, device: torch.device) -> torch.dtype:
        """bfloat16 on CUDA for flow-matching and T5 families (T5 overflows in float16)."""
        if device.type == "cuda" and (cls.flow_matching or cls.uses_t5):
            return torch.bfloat16
        return super().auto_dtype(device)

    # ---------------------------------------------------------------- noise process
    def build_noise_process(self) -> NoiseSchedule:
        """The model's own process: DDPM from the scheduler config's betas (any DDPM-type scheduler
        class), or flow matching from `FlowMatchEulerDiscreteScheduler`'s shift."""
        if self.flow_matching and self.dpm_flow:  # DPM-Solver / UniPC in flow mode: `flow_shift`, no dynamic shift
            config = self.pipe.scheduler.config
            return FlowSchedule(config.num_train_timesteps, shift=config.get("flow_shift", 1.0) or 1.0)
        if self.flow_matching:
            return FlowSchedule.from_scheduler(self.pipe.scheduler, mu=self.flow_mu())
        from diffusers import DDPMScheduler

        return DiscreteSchedule.from_scheduler(DDPMScheduler.from_config(self.pipe.scheduler.config))

    def scheduler_timestep_dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's sampling scheduler's timesteps (int64 for DDPM/DDIM/DPM-Solver,
        float32 for Euler): a DDPM family passes its integer t to the denoiser in that dtype, as the
        pipeline does (same values; a float32 t would otherwise differ from the pipeline's int64 one)."""
        if self.flow_matching:
            return torch.float64
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(2)
        return scheduler.timesteps.dtype

    def flow_mu(self) -> Optional[float]:
        """The resolution-dependent shift of models with `use_dynamic_shifting` (FLUX)."""
        return None

    def token_mu(self, image_tokens: int) -> float:
        """mu of the pipelines' `calculate_shift`: linear in the image-token count between the
        scheduler config's (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)."""
        config = self.pipe.scheduler.config
        base_tokens, max_tokens = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        slope = (max_shift - base_shift) / (max_tokens - base_tokens)
        return float(image_tokens * slope + base_shift - slope * base_tokens)

    @property
    def dpm_flow(self) -> bool:
        """The checkpoint samples with a multistep solver in flow mode (`use_flow_sigmas`: Sana's
        DPM-Solver, HiDream-I1-Full's UniPC) rather than `FlowMatchEulerDiscreteScheduler`."""
        return bool(self.pipe.scheduler.config.get("use_flow_sigmas", False))

    def flow_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The scheduler's timestep of a flow sigma, as its `set_timesteps` makes it (each pipeline
        then casts or scales it): 1000 sigma in float32 (`FlowMatchEulerDiscreteScheduler`), or 1000
        sigma computed in float64 and truncated to int64 (DPM-Solver / UniPC in flow mode)."""
        steps = self.pipe.scheduler.config.num_train_timesteps
        if self.dpm_flow:
            return (sigma.to(torch.float64) * steps).to(torch.int64)
        return sigma.to(torch.float32) * float(steps)

    # ---------------------------------------------------------------- images
    #: whether the pipeline subtracts the VAE's `shift_factor` (CogView4 and HunyuanImage only scale)
    uses_vae_shift: ClassVar[bool] = True

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean (not a sample), shifted and scaled as the pipeline's decoder expects."""
        vae = self.pipe.vae
        posterior = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        latents = posterior.mean.to(torch.float32)
        shift = (vae.config.get("shift_factor", None) or 0.0) if self.uses_vae_shift else 0.0
        return (latents - shift) * float(vae.config.scaling_factor)

    # ---------------------------------------------------------------- the denoiser
    def denoise(self, x: torch.Tensor, t: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """One network call on device tensors; the family's own keyword arguments."""
        raise NotImplementedError

    def mean_channels(self, output: torch.Tensor, channels: int) -> torch.Tensor:
        """Models with learned variance output [mean, variance] channels: score the mean only."""
        return output[:, :channels]

    # ---------------------------------------------------------------- text encoders and memory
    #: where text encoders go when scoring starts (CPU: they stay usable for a late prompt)
    release_device: ClassVar[str] = "cpu"

    def text_encoders(self) -> dict[str, torch.nn.Module]:
        """The pipeline's text encoders by component name (`text_encoder`, `text_encoder_2`, ...)."""
        return {name: module for name, module in self.pipe.components.items()
                if name.startswith("text_encoder") and isinstance(module, torch.nn.Module)}

    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        """Prompts -> conditioning rows on the CPU, with the text encoders on the device."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """`encode_text`; a prompt that comes after scoring began (caption selection encodes per
        batch) brings the text encoders back to the device, where they then stay."""
        if self.scoring and not self.keep_text_encoders and self.text_encoders():
            LOG.info("prompts encoded after scoring began: the text encoders return to %s and stay there", self.device)
            for module in self.text_encoders().values():
                module.to(self.device)
            self.keep_text_encoders = True
        return self.encode_text(prompts)

    def start_scoring(self) -> None:
        """Before the first denoiser call (every classification prompt is encoded by then): the text
        encoders leave the device and the denoiser joins it, so the peak accelerator memory is the
        denoiser, the VAE and the prompts' states, never the text encoders besides (FLUX.2 [dev]'s
        is ~48 GB in bfloat16)."""
        if not self.keep_text_encoders:
            for module in self.text_encoders().values():
                module.to(self.release_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.denoiser.to(self.device)
        self.scoring = True

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        if not self.scoring:
            self.start_scoring()
        timesteps = timesteps.to(self.device) if self.flow_matching else timesteps.to(self.device, self.timestep_dtype)
        output = run_denoiser(self.denoise, x_t.to(self.device, self.dtype), timesteps,
                              conditioning.to(self.device, self.dtype), self.speed)
        return self.mean_channels(output, x_t.shape[1])
