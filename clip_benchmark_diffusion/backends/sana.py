"""Sana: a linear-attention DiT on the 32x deep-compression autoencoder, Gemma2 states with a mask."""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class SanaBackend(PipelineBackend):
    """velocity (noise - x0) on DC-AE latents * scaling_factor; text = Gemma2's last hidden state of
    the pipeline's default 'complex human instruction' + prompt, its first token and last 299 kept
    (300 with the mask); sigma shifted by the scheduler's `flow_shift` (DPM-Solver in flow mode).
    Network timestep as the pipeline makes it: the scheduler's *integer* timestep (1000 sigma,
    truncated: DPM-Solver stores its timesteps as int64) times the model's `timestep_scale`."""

    diffusers_class = "SanaPipeline"
    family = "sana"
    flow_matching = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: text tokens the pipeline keeps (its `max_sequence_length`)
    max_sequence_length = 300

    @property
    def instruction(self) -> Optional[list]:
        """The pipeline's default `complex_human_instruction` (prepended to every prompt)."""
        return inspect.signature(self.pipe.__call__).parameters["complex_human_instruction"].default

    def describe_extra(self) -> dict:
        return {"complex_human_instruction": bool(self.instruction)}

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """The DC-AE's latent (deterministic), scaled as the pipeline's decoding undoes."""
        vae = self.pipe.vae
        return vae.encode(pixels.to(self.device, vae.dtype)).latent.to(torch.float32) * float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, mask, _, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                     device=self.device, clean_caption=False,
                                                     max_sequence_length=self.max_sequence_length,
                                                     complex_human_instruction=self.instruction)
        return Conditioning(states=states.cpu(), mask=mask.cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        timestep = self.flow_timestep(sigma) * self.denoiser.config.timestep_scale
        output = self._denoiser(x, encoder_hidden_states=c.states, encoder_attention_mask=c.mask, timestep=timestep,
                                return_dict=False, attention_kwargs=None)[0]
        return output
