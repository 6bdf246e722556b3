"""PixArt-alpha and PixArt-Sigma: DiT with T5 cross-attention and its attention mask."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class PixArtBackend(PipelineBackend):
    """epsilon DiT on VAE latents; learned variance (8 output channels, the first 4 scored);
    1024-px alpha models take (resolution, aspect ratio) micro-conditions."""

    denoiser_name = "transformer"
    family = "pixart"
    uses_t5 = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: T5 tokens the pipeline encodes by default
    default_sequence_length = 120

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        length = min(self.default_sequence_length, int(self.pipe.tokenizer.model_max_length))
        states, mask, _, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                     device=self.device, clean_caption=False,
                                                     max_sequence_length=length)
        return Conditioning(states=states.cpu(), mask=mask.cpu())

    def denoise(self, x: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
        added = {"resolution": None, "aspect_ratio": None}
        if self.denoiser.use_additional_conditions:
            height, width = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
            added = {"resolution": torch.tensor([[height, width]], device=x.device, dtype=x.dtype).expand(len(x), -1),
                     "aspect_ratio": torch.tensor([[height / width]], device=x.device, dtype=x.dtype).expand(len(x), -1)}
        return self._denoiser(x, encoder_hidden_states=c.states, encoder_attention_mask=c.mask, timestep=t,
                              added_cond_kwargs=added).sample


class PixArtAlphaBackend(PixArtBackend):
    """PixArt-alpha (T5, 120 tokens)."""

    diffusers_class = "PixArtAlphaPipeline"


class PixArtSigmaBackend(PixArtBackend):
    """PixArt-Sigma (T5, 300 tokens)."""

    diffusers_class = "PixArtSigmaPipeline"
    default_sequence_length = 300
