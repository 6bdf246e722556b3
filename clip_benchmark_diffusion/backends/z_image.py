"""Z-Image: a single-stream DiT taking lists (per-image latents, per-prompt Qwen3 states of their own length)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend, text_list, text_rows


class ZImageBackend(PipelineBackend):
    """Flow on latents (z - shift) * scale, but time runs backwards: the network takes
    (1000 - 1000 sigma) / 1000 in float32 (1 = clean) and predicts x0 - noise, so its output is
    negated into the velocity (noise - x0), as the pipeline does; text = Qwen3's second-to-last
    hidden state after the chat template, each prompt as long as its own tokens (a list); latents a
    list of (C, 1, H, W); sigma shifted by resolution (mu from the image-token count)."""

    diffusers_class = "ZImagePipeline"
    family = "z-image"
    flow_matching = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: text tokens the pipeline keeps at most (its `max_sequence_length`)
    max_sequence_length = 512
    #: pixel size of the released checkpoints (the pipeline's default is 1024)
    default_resolution = 1024

    def native_resolution(self) -> int:
        return self.default_resolution

    def flow_mu(self) -> Optional[float]:
        return self.token_mu((self.resolution // self.vae_scale_factor // 2) ** 2)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, _ = self.pipe.encode_prompt(list(prompts), device=self.device, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length)
        return text_rows(states)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        timestep = (1000 - self.flow_timestep(sigma)) / 1000
        outputs = self._denoiser(list(x.unsqueeze(2).unbind(dim=0)), timestep, text_list(c),
                                 joint_attention_kwargs=None, return_dict=False)[0]
        return -torch.stack(outputs).squeeze(2)
