"""Stable Diffusion family (v1.x, v2.x, and any diffusers folder with the same parts).

Only the parts a classifier needs are loaded (VAE, text encoder, tokenizer, UNet, scheduler
config): no safety checker, no sampling loop.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..schedules import DiscreteSchedule
from ..settings import ScorerSettings
from .base import Conditioning, DiffusionBackend
from .speed import SpeedOptions, prepare_denoiser, run_denoiser

PIPELINE_CLASSES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "AltDiffusionPipeline",
)
REQUIRED_PARTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


class StableDiffusionBackend(DiffusionBackend):
    """VAE latents, CLIP-text cross-attention, epsilon- or v-prediction UNet."""

    parts = REQUIRED_PARTS

    def __init__(self, source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 local_files_only: bool = False, cache_dir: str | None = None,
                 speed: SpeedOptions = SpeedOptions(), settings: Optional[ScorerSettings] = None) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.device = torch.device(device)
        self.dtype = dtype
        common = dict(local_files_only=local_files_only, cache_dir=cache_dir)
        self.scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common)
        self.tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
        self.text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype, **common)
        self.vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **common)
        self.unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **common)
        for module in (self.text_encoder, self.vae, self.unet):
            module.to(self.device).eval().requires_grad_(False)
        self.speed = speed
        self._unet = prepare_denoiser(self.unet, speed)

        self.schedule = DiscreteSchedule.from_scheduler(self.scheduler)
        self.prediction_type = self.scheduler.config.prediction_type
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        native = int(self.unet.config.sample_size) * self.vae_scale_factor
        self.resolution = int((settings and settings.resolution) or native)
        self.latent_scaling = float(self.vae.config.scaling_factor)
        self.description = {
            "backend": "stable-diffusion",
            "source": str(source),
            "prediction_type": self.prediction_type,
            "resolution": self.resolution,
            "dtype": str(dtype).replace("torch.", ""),
            "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
            "channels_last": speed.channels_last,
            "compile": speed.compile_mode,
        }

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        # The posterior mean, not a sample: the image's latent must not depend on extra noise.
        return (posterior.mean * self.latent_scaling).to(torch.float32)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return Conditioning(states=hidden.to("cpu"))

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        return run_denoiser(lambda x, t, c: self._unet(x, t, encoder_hidden_states=c.states).sample,
                            x_t.to(self.device, self.dtype), timesteps.to(self.device),
                            conditioning.to(self.device, self.dtype), self.speed)
