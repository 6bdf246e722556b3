"""Stable Diffusion XL: two CLIP text encoders, pooled projection and size micro-conditioning."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class StableDiffusionXLBackend(PipelineBackend):
    """epsilon UNet on VAE latents (scale 0.13025); text = penultimate states of CLIP-L and
    OpenCLIP-G concatenated, pooled = the second's projection; `time_ids` = (H, W, 0, 0, H, W) of
    the scored image, which the transform makes `resolution` square."""

    diffusers_class = "StableDiffusionXLPipeline"
    denoiser_name = "unet"
    family = "sdxl"
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")

    def load_overrides(self) -> dict:
        return {"add_watermarker": False}

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, _, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self.device,
                                                       do_classifier_free_guidance=False)
        size = (self.resolution, self.resolution)
        time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=torch.float32,
                                               text_encoder_projection_dim=self.pipe.text_encoder_2.config.projection_dim)
        return Conditioning(states=states.cpu(), pooled=pooled.cpu(), time_ids=time_ids.expand(len(prompts), -1).cpu())

    def denoise(self, x: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
        return self._denoiser(x, t, encoder_hidden_states=c.states,
                              added_cond_kwargs={"text_embeds": c.pooled, "time_ids": c.time_ids}).sample
