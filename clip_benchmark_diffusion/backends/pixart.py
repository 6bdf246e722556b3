"""PixArt-alpha and PixArt-Sigma: DiT with T5 cross-attention and its attention mask."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend, cleans_captions, text_length


class PixArtBackend(PipelineBackend):
    """epsilon DiT on VAE latents; learned variance (8 output channels, the first 4 scored);
    1024-px alpha models take (resolution, aspect ratio) micro-conditions."""

    denoiser_name = "transformer"
    family = "pixart"
    uses_t5 = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: T5 tokens the pipeline pads to by default (its `max_sequence_length`)
    default_sequence_length = 120
    #: whether (resolution, aspect ratio) are passed (PixArt-Sigma's pipeline never passes them)
    micro_conditioned = False

    def describe_extra(self) -> dict:
        return {"clean_caption": cleans_captions(), "max_sequence_length": self.max_sequence_length}

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens: the pipeline's default (see `text_length`)."""
        return text_length(self.default_sequence_length, self.pipe.tokenizer)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        """As the pipeline encodes by default: captions cleaned (when bs4 and ftfy are installed),
        T5 padded to 120 (alpha) or 300 (Sigma) tokens with their mask."""
        states, mask, _, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                     device=self.device, clean_caption=cleans_captions(),
                                                     max_sequence_length=self.max_sequence_length)
        return Conditioning(states=states.cpu(), mask=mask.cpu())

    def denoise(self, x: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
        added = {"resolution": None, "aspect_ratio": None}
        if self.micro_conditioned:
            height, width = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
            added = {"resolution": torch.tensor([[height, width]], device=x.device, dtype=x.dtype).expand(len(x), -1),
                     "aspect_ratio": torch.tensor([[height / width]], device=x.device, dtype=x.dtype).expand(len(x), -1)}
        return self._denoiser(x, encoder_hidden_states=c.states, encoder_attention_mask=c.mask, timestep=t,
                              added_cond_kwargs=added).sample


class PixArtAlphaBackend(PixArtBackend):
    """PixArt-alpha (T5, 120 tokens)."""

    diffusers_class = "PixArtAlphaPipeline"

    @property
    def micro_conditioned(self) -> bool:
        """The pipeline's rule: (resolution, aspect ratio) only for the 1024-px models (sample size 128)."""
        return int(self.denoiser.config.sample_size) == 128


class PixArtSigmaBackend(PixArtBackend):
    """PixArt-Sigma (T5, 300 tokens)."""

    diffusers_class = "PixArtSigmaPipeline"
    default_sequence_length = 300
