"""Stable Diffusion 1.x / 2.x (and any diffusers folder with the same parts): CLIP-text cross-attention,
epsilon- or v-prediction UNet on VAE latents.

Only the parts a classifier needs are loaded (VAE, text encoder, tokenizer, UNet, scheduler
config): no safety checker, no sampling loop.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class StableDiffusionBackend(PipelineBackend):
    """epsilon or v on latents z * scale (the posterior mean); text = CLIP's last hidden states,
    as `StableDiffusionPipeline.encode_prompt` makes them; network timestep = the integer t."""

    diffusers_class = "StableDiffusionPipeline"
    denoiser_name = "unet"
    family = "stable-diffusion"
    parts = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    #: the VAE encodes in the model's dtype, as this family always has (its configs ask for a float16
    #: upcast that the scores were never computed with)
    upcasts_vae = False

    def load_overrides(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean (not a sample), scaled in the VAE's dtype and then made float32: the
        order this family's scores were always computed in (in half precision the scaled latent is
        rounded once more than `PipelineBackend`'s)."""
        vae = self.pipe.vae
        posterior = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        return (posterior.mean * float(vae.config.scaling_factor)).to(torch.float32)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, do_classifier_free_guidance=False)
        return Conditioning(states=states.cpu())

    def denoise(self, x: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
        return self._denoiser(x, t, encoder_hidden_states=c.states).sample
