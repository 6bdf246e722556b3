"""CogView4: a DiT on VAE latents, GLM-4 states of each prompt's own length, SDXL-like size conditions."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend, text_rows


class CogView4Backend(PipelineBackend):
    """velocity (noise - x0) on latents z * scaling_factor (the pipeline's decoding applies no shift);
    sigma shifted by mu = sqrt(image tokens / 256) * max_shift + base_shift with a *linear* time shift,
    but the network receives the unshifted timestep 1000 u (an integer on the model's own grid),
    as the pipeline passes its integer timesteps while its scheduler shifts only the sigmas. Text =
    GLM-4's second-to-last hidden state, each prompt left-padded to a multiple of 16 tokens and
    encoded alone (the encoder gets no mask, so a prompt's states depend on its batch's longest:
    alone, they are what the pipeline computes for that prompt); the denoiser also gets no mask, so
    a pass runs one call per distinct text length."""

    diffusers_class = "CogView4Pipeline"
    family = "cogview4"
    uses_vae_shift = False  # the pipeline only scales its latents
    flow_matching = True
    parts = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
    #: text tokens the pipeline keeps at most (its `max_sequence_length`)
    max_sequence_length = 1024

    def flow_mu(self) -> Optional[float]:
        """The pipeline's own `calculate_shift` (square-root in the image-token count)."""
        from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift

        config = self.pipe.scheduler.config
        tokens = (self.resolution // self.vae_scale_factor) ** 2 // self.denoiser.config.patch_size ** 2
        return float(calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("base_shift", 0.25),
                                     config.get("max_shift", 0.75)))

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        states = [self.pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device=self.device,
                                          max_sequence_length=self.max_sequence_length)[0][0] for prompt in prompts]
        return text_rows(states)

    def network_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """1000 u in float32, u the unshifted grid position of sigma, rounded to the integer it is
        within float error (the pipeline's timesteps are integers)."""
        steps = self.pipe.scheduler.config.num_train_timesteps
        t = self.noise_process.unshifted(sigma) * steps
        nearest = torch.round(t)
        return torch.where((t - nearest).abs() < 1e-6, nearest, t).to(torch.float32)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, c: Conditioning) -> torch.Tensor:
        batch = len(x)
        size = torch.tensor([[x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor]],
                            dtype=c.states.dtype, device=x.device).repeat(batch, 1)
        crop = torch.zeros((batch, 2), dtype=c.states.dtype, device=x.device)
        timestep = self.network_timestep(sigma)
        lengths = c.mask.sum(dim=1)
        output = None
        for length in sorted(set(lengths.tolist())):  # no text mask: rows of one length per call
            rows = (lengths == length).nonzero().flatten()
            part = self._denoiser(hidden_states=x[rows], encoder_hidden_states=c.states[rows, :length],
                                  timestep=timestep[rows], original_size=size[rows], target_size=size[rows],
                                  crop_coords=crop[rows], attention_kwargs=None, return_dict=False)[0]
            if output is None:
                output = part.new_empty((batch, *part.shape[1:]))
            output[rows] = part
        return output
