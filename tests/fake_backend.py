"""A deterministic stand-in backend whose candidate errors are nearly tied.

It implements the whole `DiffusionBackend` interface with arithmetic instead of networks,
so scorer/adapter behaviour with thousands of candidates can be checked in milliseconds.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
from torchvision import transforms

from clip_benchmark_diffusion.backends.base import Conditioning, DiffusionBackend
from clip_benchmark_diffusion.schedules import DiscreteSchedule


def _prompt_value(prompt: str) -> float:
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class FakeBackend(DiffusionBackend):
    """Predicts `spread * value(prompt)` everywhere: candidates differ by tiny amounts."""

    def __init__(self, spread: float = 1e-4, resolution: int = 8) -> None:
        self.resolution = resolution
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        #: Stable Diffusion's DDPM process, epsilon-predicting
        self.noise_process = DiscreteSchedule(torch.cumprod(1 - betas, dim=0), "epsilon")
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.spread = spread
        self.description = {"backend": "fake"}
        self.predict_rows = 0
        self.largest_predict = 0  # most rows in one network call

    def image_transform(self) -> Callable:
        return transforms.Compose([transforms.Resize(self.resolution), transforms.CenterCrop(self.resolution),
                                   transforms.ToTensor()])

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, :1].to(torch.float32)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return Conditioning(states=torch.tensor([[self.spread * _prompt_value(p)] for p in prompts],
                                                dtype=torch.float32))

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        self.predict_rows += len(x_t)
        self.largest_predict = max(self.largest_predict, len(x_t), len(conditioning))
        return x_t * 0 + conditioning.states.view(-1, 1, 1, 1)
