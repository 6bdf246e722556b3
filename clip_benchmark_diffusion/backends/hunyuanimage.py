"""HunyuanImage 2.1: a dual-stream DiT on a 32x VAE, Qwen2.5-VL states and ByT5 states of quoted (glyph) text."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class HunyuanImageBackend(PipelineBackend):
    """velocity (noise - x0) on latents z * scaling_factor (32 pixels per latent cell); network
    timestep = 1000 sigma in the model's dtype (raw, not / 1000), as the pipeline passes it; text =
    Qwen2.5-VL's third-to-last hidden state after the chat template (34 tokens dropped), 1000 tokens
    with the mask, plus ByT5 states of the prompt's quoted text (zeros and an all-zero mask when it
    has none), 128 tokens. Guidance-distilled checkpoints get `--diffusion_guidance` (x 1000, as the
    pipeline passes it); a mean-flow checkpoint is asked for the instantaneous velocity (r = t), which
    no sampling step of its pipeline asks for (a 1-step run passes r = 0)."""

    diffusers_class = "HunyuanImagePipeline"
    size_from_pipeline = True
    family = "hunyuan-image"
    uses_vae_shift = False  # the pipeline only scales its latents
    flow_matching = True
    parts = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer", "scheduler")

    def load_overrides(self) -> dict:
        return {"guider": None, "ocr_guider": None}  # guidance schedules of sampling, not used to score

    def describe_extra(self) -> dict:
        config = self.denoiser.config
        return {"guidance": self.load_settings.guidance if config.guidance_embeds else None,
                "meanflow": bool(config.use_meanflow)}

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, mask, glyph_states, glyph_mask = self.pipe.encode_prompt(list(prompts), device=self.device,
                                                                         batch_size=len(prompts))
        return Conditioning(states=states.cpu(), mask=mask.cpu(), glyph_states=glyph_states.cpu(),
                            glyph_mask=glyph_mask.cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        config = self.denoiser.config
        timestep = self.flow_timestep(sigma).to(x.dtype)
        guidance = torch.full((len(x),), self.load_settings.guidance, dtype=self.denoiser.dtype, device=x.device) * 1000.0 \
            if config.guidance_embeds else None
        return self._denoiser(hidden_states=x, timestep=timestep, timestep_r=timestep if config.use_meanflow else None,
                              guidance=guidance, attention_kwargs={}, return_dict=False, encoder_hidden_states=c.states,
                              encoder_attention_mask=c.mask, encoder_hidden_states_2=c.glyph_states,
                              encoder_attention_mask_2=c.glyph_mask)[0]
