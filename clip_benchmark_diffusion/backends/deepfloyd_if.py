"""DeepFloyd IF stage I: a pixel-space UNet at 64 px conditioned on T5."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend, cleans_captions


class IFBackend(PipelineBackend):
    """epsilon UNet on pixels in [-1, 1] (no VAE), cosine DDPM schedule; learned variance (first 3
    of 6 output channels scored); T5 states of 77 tokens, as the pipeline encodes them."""

    diffusers_class = "IFPipeline"
    denoiser_name = "unet"
    family = "deepfloyd-if"
    uses_t5 = True
    parts = ("text_encoder", "tokenizer", "unet", "scheduler")

    def load_overrides(self) -> dict:
        return {"safety_checker": None, "feature_extractor": None, "watermarker": None,
                "requires_safety_checker": False}

    def native_resolution(self) -> int:
        return int(self.denoiser.config.sample_size)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stage I models pixels directly: x0 is the image in [-1, 1]."""
        return pixels.to(self.device, torch.float32)

    def describe_extra(self) -> dict:
        return {"clean_caption": cleans_captions()}

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        """Captions cleaned as the pipeline's default does (when bs4 and ftfy are installed)."""
        states, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=self.device,
                                            clean_caption=cleans_captions())
        return Conditioning(states=states.cpu())

    def denoise(self, x: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
        return self._denoiser(x, t, encoder_hidden_states=c.states).sample
