"""FLUX.1 dev / schnell: rectified flow on packed 2x2 latent patches, T5 + CLIP-L pooled."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend, text_length


class FluxBackend(PipelineBackend):
    """velocity on latents (z - shift) * scale, packed to tokens with image ids; text = T5 states
    with text ids, pooled = CLIP-L; network timestep = sigma, rounded as the pipeline does
    (1000 sigma in float32, cast to the model's dtype, then / 1000); sigma shifted by resolution (mu from
    the image-token count, as the pipeline does). FLUX.1-dev takes a guidance value
    (`--diffusion_guidance`, default 1.0 = plain conditional); T5 cannot be dropped."""

    diffusers_class = "FluxPipeline"
    size_from_pipeline = True
    family = "flux"
    flow_matching = True
    uses_t5 = True
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "scheduler")

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    def flow_mu(self) -> Optional[float]:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.pipe.scheduler.config
        tokens = (self.latent_size // 2) ** 2
        return float(calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                     config.get("base_shift", 0.5), config.get("max_shift", 1.15)))

    @property
    def guided(self) -> bool:
        return bool(self.denoiser.config.guidance_embeds)

    def describe_extra(self) -> dict:
        return {"guidance": self.load_settings.guidance if self.guided else None}

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens: the pipeline's default 512 (see `text_length`)."""
        return text_length(512, self.pipe.tokenizer_2 if self.family == "flux" else self.pipe.tokenizer)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, pooled, text_ids = self.pipe.encode_prompt(list(prompts), None, device=self.device,
                                                           max_sequence_length=self.max_sequence_length)
        return Conditioning(states=states.cpu(), pooled=pooled.cpu(),
                            text_ids=text_ids.expand(len(prompts), -1, -1).cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        batch, channels, height, width = x.shape
        packed = self.pipe._pack_latents(x, batch, channels, height, width)
        image_ids = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, x.device, x.dtype)
        guidance = torch.full((batch,), self.load_settings.guidance, device=x.device, dtype=torch.float32) \
            if self.guided else None
        timestep = self.flow_timestep(sigma).to(x.dtype) / 1000
        output = self._denoiser(hidden_states=packed, timestep=timestep, guidance=guidance,
                                pooled_projections=c.pooled, encoder_hidden_states=c.states,
                                txt_ids=c.text_ids[0], img_ids=image_ids).sample
        return self.pipe._unpack_latents(output, height * self.vae_scale_factor, width * self.vae_scale_factor,
                                         self.vae_scale_factor)
