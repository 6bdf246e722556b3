"""FLUX.2 [dev] and [klein]: rectified flow on 2x2-patchified latents normalised with the VAE's
batch-norm statistics, text states stacked from three hidden layers of an LLM."""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class Flux2Backend(PipelineBackend):
    """velocity on the VAE's posterior mean, patchified 2x2 (4x the channels) and normalised with
    the VAE's batch-norm running statistics, packed to tokens with 4-D (t, h, w, l) ids; text =
    Mistral-Small-3.1 hidden layers 10/20/30 stacked, padded to 512 tokens (no mask, as the
    pipeline passes none), with 4-D text ids; no pooled vector; guidance always passed
    (`--diffusion_guidance`); network timestep = 1000 sigma in the model's dtype / 1000; sigma
    shifted by the pipeline's empirical mu (image tokens, at its default step count)."""

    diffusers_class = "Flux2Pipeline"
    size_from_pipeline = True
    family = "flux2"
    flow_matching = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: text tokens the pipeline pads to by default (its `max_sequence_length`)
    max_sequence_length = 512

    @property
    def default_steps(self) -> int:
        """The pipeline's default step count: its empirical mu depends on it."""
        return int(inspect.signature(self.pipe.__call__).parameters["num_inference_steps"].default)

    def flow_mu(self) -> Optional[float]:
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        tokens = (self.resolution // self.vae_scale_factor // 2) ** 2
        return compute_empirical_mu(image_seq_len=tokens, num_steps=self.default_steps)

    def describe_extra(self) -> dict:
        return {"guidance": self.load_settings.guidance if self.guided else None, "mu_steps": self.default_steps}

    @property
    def guided(self) -> bool:
        return True

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
        z = self.pipe._patchify_latents(z).to(torch.float32)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, torch.float32)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1).to(z.device, torch.float32) + vae.config.batch_norm_eps)
        return (z - mean) / std

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, text_ids = self.pipe.encode_prompt(list(prompts), device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
        return Conditioning(states=states.cpu(), text_ids=text_ids.cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        batch = len(x)
        latent_ids = self.pipe._prepare_latent_ids(x).to(x.device)
        guidance = torch.full((batch,), self.load_settings.guidance, device=x.device, dtype=torch.float32) \
            if self.guided else None
        output = self._denoiser(hidden_states=self.pipe._pack_latents(x),
                                timestep=self.flow_timestep(sigma).to(x.dtype) / 1000, guidance=guidance,
                                encoder_hidden_states=c.states, txt_ids=c.text_ids, img_ids=latent_ids,
                                joint_attention_kwargs=None, return_dict=False)[0]
        return self.pipe._unpack_latents_with_ids(output[:, :latent_ids.shape[1]], latent_ids)


class Flux2KleinBackend(Flux2Backend):
    """FLUX.2 [klein]: as [dev], with Qwen3 states (hidden layers 9/18/27) and no guidance input
    (its pipeline passes `guidance=None`)."""

    diffusers_class = "Flux2KleinPipeline"
    family = "flux2-klein"

    @property
    def guided(self) -> bool:
        return False
