"""Chroma: a FLUX.1-schnell derivative without CLIP or guidance, T5 with a mask that keeps one pad token."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Conditioning
from .flux import FluxBackend


class ChromaBackend(FluxBackend):
    """As FLUX.1 (packed 2x2 latents with image ids, velocity, 1000 sigma in the model's dtype / 1000,
    resolution-dependent mu), but no pooled vector and no guidance input; T5 states at 512 tokens
    with the pipeline's mask (every real token and the first pad), extended over the image tokens."""

    diffusers_class = "ChromaPipeline"
    family = "chroma"
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")

    @property
    def guided(self) -> bool:
        return False

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, text_ids, mask, _, _, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                                  device=self.device,
                                                                  max_sequence_length=self.max_sequence_length)
        return Conditioning(states=states.cpu(), mask=mask.cpu(), text_ids=text_ids.expand(len(prompts), -1, -1).cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        batch, channels, height, width = x.shape
        packed = self.pipe._pack_latents(x, batch, channels, height, width)
        image_ids = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, x.device, x.dtype)
        mask = self.pipe._prepare_attention_mask(batch, packed.shape[1], x.dtype, attention_mask=c.mask)
        output = self._denoiser(hidden_states=packed, timestep=self.flow_timestep(sigma).to(x.dtype) / 1000,
                                encoder_hidden_states=c.states, txt_ids=c.text_ids[0], img_ids=image_ids,
                                attention_mask=mask, joint_attention_kwargs={}, return_dict=False)[0]
        return self.pipe._unpack_latents(output, height * self.vae_scale_factor, width * self.vae_scale_factor,
                                         self.vae_scale_factor)
