"""Qwen-Image: an MMDiT on packed 2x2 latents of a per-channel normalised VAE, Qwen2.5-VL text states."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


def trim_to_longest(c: Conditioning) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(states, mask) of a pass cut to its longest prompt, mask None when every token is real: what
    the pipeline passes for these prompts as one batch (its `encode_prompt` pads to the batch's
    longest and drops an all-true mask). Rows are stacked padded to the longest prompt of all."""
    length = int(c.mask.sum(dim=1).max())
    states, mask = c.states[:, :length], c.mask[:, :length]
    return states, None if bool(mask.all()) else mask


class QwenImageBackend(PipelineBackend):
    """velocity (noise - x0) on latents normalised per channel ((z - latents_mean) / latents_std),
    packed to 2x2 tokens with `img_shapes` for the rotary positions; text = Qwen2.5-VL's last hidden
    state after the chat template (its first 34 tokens dropped), as long as each prompt, with a mask;
    no pooled vector; network timestep = 1000 sigma in the model's dtype / 1000 (as the pipeline
    rounds it); sigma shifted by resolution (mu from the image-token count)."""

    diffusers_class = "QwenImagePipeline"
    size_from_pipeline = True
    family = "qwen-image"
    flow_matching = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: text tokens the pipeline keeps at most (its `max_sequence_length`)
    max_sequence_length = 1024

    def flow_mu(self) -> Optional[float]:
        return self.token_mu((self.resolution // self.vae_scale_factor // 2) ** 2)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the video VAE (one frame), normalised per channel as the pipeline's
        decoding undoes; (B, C, h, w)."""
        vae = self.pipe.vae
        z = vae.encode(pixels.to(self.device, vae.dtype)[:, :, None]).latent_dist.mean[:, :, 0].to(torch.float32)
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=z.device).view(1, -1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=z.device).view(1, -1, 1, 1)
        return (z - mean) / std

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, mask = self.pipe.encode_prompt(list(prompts), device=self.device,
                                               max_sequence_length=self.max_sequence_length)
        if mask is None:
            mask = torch.ones(states.shape[:2], dtype=torch.int64, device=states.device)
        return Conditioning(states=states.cpu(), mask=mask.cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        batch, channels, height, width = x.shape
        states, mask = trim_to_longest(c)
        packed = self.pipe._pack_latents(x, batch, channels, height, width)
        guidance = torch.full((batch,), self.load_settings.guidance, device=x.device, dtype=torch.float32) \
            if self.denoiser.config.guidance_embeds else None
        output = self._denoiser(hidden_states=packed, timestep=self.flow_timestep(sigma).to(x.dtype) / 1000,
                                guidance=guidance, encoder_hidden_states_mask=mask, encoder_hidden_states=states,
                                img_shapes=[[(1, height // 2, width // 2)]] * batch, attention_kwargs={},
                                return_dict=False)[0]
        size = height * self.vae_scale_factor
        return self.pipe._unpack_latents(output, size, width * self.vae_scale_factor, self.vae_scale_factor)[:, :, 0]
