"""HiDream-I1: a sparse (mixture-of-experts) DiT conditioned on four text encoders."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend


class HiDreamBackend(PipelineBackend):
    """Flow on latents (z - shift) * scale; the network takes the raw scheduler timestep (1000 sigma)
    and predicts x0 - noise, negated into the velocity as the pipeline does; text = T5 states, every
    hidden layer of Llama-3.1-8B (the model reads `llama_layers` of them) and the pooled CLIP-L and
    CLIP-G projections concatenated, all at the pipeline's 128 tokens. Host memory per prompt is
    large: 32 Llama layers x 128 tokens x 4096 = ~34 MB in bfloat16."""

    diffusers_class = "HiDreamImagePipeline"
    size_from_pipeline = True
    family = "hidream"
    flow_matching = True
    uses_t5 = True
    parts = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4", "tokenizer", "tokenizer_2",
             "tokenizer_3", "tokenizer_4", "transformer", "scheduler")
    #: tokens the pipeline encodes by default (its `max_sequence_length`)
    max_sequence_length = 128

    def flow_mu(self) -> Optional[float]:
        """As the pipeline computes it: from the model's largest token count (`max_seq`)."""
        return self.token_mu(int(self.denoiser.max_seq))

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        t5, _, llama, _, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None,
                                                              prompt_4=None, do_classifier_free_guidance=False,
                                                              device=self.device,
                                                              max_sequence_length=self.max_sequence_length)
        return Conditioning(states=t5.cpu(), pooled=pooled.cpu(), layers=llama.transpose(0, 1).cpu())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        output = self._denoiser(hidden_states=x, timesteps=self.flow_timestep(sigma), encoder_hidden_states_t5=c.states,
                                encoder_hidden_states_llama3=c.layers.transpose(0, 1), pooled_embeds=c.pooled,
                                attention_kwargs=None, return_dict=False)[0]
        return -output
