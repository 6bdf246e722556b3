"""Stable Diffusion 3 / 3.5: MMDiT, rectified flow, CLIP-L + CLIP-G (+ optional T5)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Conditioning, LoadSettings
from .pipeline_backend import PipelineBackend, text_length

T5_PARTS = ("text_encoder_3", "tokenizer_3")


def _t5_absent(index: dict) -> bool:
    entry = index.get("text_encoder_3")
    return not entry or entry[0] is None


class StableDiffusion3Backend(PipelineBackend):
    """velocity (eps - x0) on latents (z - shift) * scale; network timestep = 1000 sigma; sigma
    shifted by the scheduler's `shift` (3.0), passed in float32 like the pipeline (not the
    model's dtype: bfloat16 would round 1000 sigma by up to 2). `drop_t5` (or a folder saved without T5) leaves T5
    out: the pipeline then puts zeros in its place, which SD3 was trained to tolerate."""

    diffusers_class = "StableDiffusion3Pipeline"
    family = "sd3"
    flow_matching = True
    uses_t5 = True
    t5_optional = True
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "scheduler") \
        + T5_PARTS

    @classmethod
    def required_parts(cls, index: dict, load: Optional[LoadSettings] = None) -> tuple[str, ...]:
        if (load is not None and load.drop_t5) or _t5_absent(index):
            return tuple(p for p in cls.parts if p not in T5_PARTS)
        return cls.parts

    def load_overrides(self) -> dict:
        import json
        import os

        index_file = os.path.join(self.source, "model_index.json")
        absent = os.path.isfile(index_file) and _t5_absent(json.load(open(index_file)))
        return {"text_encoder_3": None, "tokenizer_3": None} if self.load_settings.drop_t5 or absent else {}

    def describe_extra(self) -> dict:
        return {"t5": self.pipe.text_encoder_3 is not None}

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens: the pipeline's default 256 (see `text_length`)."""
        return text_length(256, self.pipe.tokenizer_3)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states, _, pooled, _ = self.pipe.encode_prompt(list(prompts), None, None, device=self.device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_sequence_length)
        return Conditioning(states=states.cpu(), pooled=pooled.cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        timestep = self.flow_timestep(sigma)  # float32, as the pipeline passes it in any dtype
        return self._denoiser(hidden_states=x, timestep=timestep, encoder_hidden_states=c.states,
                              pooled_projections=c.pooled).sample
