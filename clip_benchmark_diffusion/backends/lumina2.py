"""Lumina-Image 2.0: a unified next-DiT with Gemma2 states after a system prompt, time run backwards."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class Lumina2Backend(PipelineBackend):
    """Flow on latents (z - shift) * scale with time reversed: the network takes 1 - 1000 sigma / 1000
    in float32 (1 = clean) and predicts x0 - noise, negated into the velocity as the pipeline does;
    text = Gemma2's second-to-last hidden state of "<system prompt> <Prompt Start> <prompt>", padded
    to 256 tokens with the mask."""

    diffusers_class = "Lumina2Pipeline"
    family = "lumina2"
    flow_matching = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: text tokens the pipeline pads to by default (its `max_sequence_length`)
    max_sequence_length = 256

    def native_resolution(self) -> int:
        return int(self.pipe.default_image_size)

    def flow_mu(self) -> Optional[float]:
        """As the pipeline computes it: from `latents.shape[1]`, which is the channel count (not the
        image-token count); only used by a scheduler with dynamic shifting."""
        return self.token_mu(int(self.denoiser.config.in_channels))

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, mask, _, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                     device=self.device,
                                                     max_sequence_length=self.max_sequence_length)
        return Conditioning(states=states.cpu(), mask=mask.cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        timestep = 1 - self.flow_timestep(sigma) / self.pipe.scheduler.config.num_train_timesteps
        return -self._denoiser(hidden_states=x, timestep=timestep, encoder_hidden_states=c.states,
                               encoder_attention_mask=c.mask, return_dict=False, attention_kwargs=None)[0]
