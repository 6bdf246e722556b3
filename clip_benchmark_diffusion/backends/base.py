"""The small interface every diffusion model family implements.

The scorer only needs five things from a model: encode images once, encode prompts once,
noise a clean latent, predict from a noisy latent and a prompt, and the noise schedule.
A new family (another pipeline, a flow-matching model) is one subclass registered in
`backends/__init__.py`; nothing else changes. Its constructor takes `(source, device, dtype,
local_files_only, cache_dir, speed)`, and it runs its denoiser through `speed.run_denoiser`
so the speed switches work the same for every family.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch
from PIL import Image


class DiffusionBackend(ABC):
    """A text-conditioned denoiser, seen as a likelihood proxy for prompts."""

    #: pixel size the model was trained at (the transform resizes/crops to it)
    resolution: int
    #: "epsilon" or "v_prediction", read from the checkpoint's scheduler config
    prediction_type: str
    #: number of discrete training timesteps (t in [0, T-1])
    num_train_timesteps: int
    #: cumulative alpha products of the training schedule, float64, on CPU
    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    #: a short description recorded with every run
    description: dict

    @abstractmethod
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> tensor in the model's pixel input range, at `resolution`."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel batch (from `image_transform`) -> clean model-space samples x0 (float32)."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> conditioning tensors (one per prompt), kept on CPU so a cache of many
        prompts never occupies accelerator memory."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward-diffuse x0 to x_t with the model's own training schedule."""

    @abstractmethod
    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """Raw model output (in `prediction_type` parameterisation) for a batch."""

    @property
    def calls_per_prediction(self) -> int:
        """Network evaluations one `predict` row costs (1 for a plain UNet)."""
        return 1
