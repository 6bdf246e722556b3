"""Where every random draw of a run comes from: seeds, timesteps, noise and image keys.

Each draw is a pure function of (image key, draw index) and the settings: independent of batch
size, class order, worker count and of how many draws are asked for at once, so an adaptive
strategy that asks for more draws later gets the same earlier ones, and a resumed or sharded run
draws what an uninterrupted one would. Nothing here knows a model beyond its number of training
timesteps.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch

from .errors import UnsupportedSettings
from .settings import ScorerSettings


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit mix of integers (splitmix64-style), stable across processes."""
    state = 0x243F6A8885A308D3
    for part in parts:
        state = (state ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        state = z ^ (z >> 31)
    return state & 0x7FFFFFFFFFFFFFFF


def unit_float(bits: int) -> float:
    """Map a 63-bit integer to [0, 1)."""
    return (bits >> 10) / float(1 << 53)


def image_key_from_pixels(pixels: torch.Tensor) -> int:
    """A stable 63-bit key from an image's content, for seeding its draws."""
    data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & 0x7FFFFFFFFFFFFFFF


def van_der_corput(indices: torch.Tensor) -> torch.Tensor:
    """Base-2 radical inverse: any power-of-two prefix of 0, 1, 2, ... is evenly spread over
    [0, 1), and extending the prefix fills the gaps. That gives stratified timesteps whose
    earlier draws stay valid when more are added (adaptive strategies reuse them)."""
    result = torch.zeros(indices.shape, dtype=torch.float64)
    remaining = indices.to(torch.int64).clone()
    scale = 0.5
    while bool((remaining > 0).any()):
        result += (remaining & 1).to(torch.float64) * scale
        remaining >>= 1
        scale *= 0.5
    return result


def timestep_range_problem(settings: ScorerSettings, num_train_timesteps: int) -> Optional[str]:
    """Why the settings' timestep range does not fit a model of `num_train_timesteps`, or None
    (the one place this is checked: before any image is read, and again by every draw)."""
    steps = num_train_timesteps
    if settings.t_max is not None and settings.t_max >= steps:
        return (f"timestep range [{settings.t_min}, {settings.t_max}] is outside the model's {steps} training "
                f"timesteps (0 to {steps - 1})")
    if settings.t_min >= steps:
        return f"t_min={settings.t_min} is outside the model's {steps} training timesteps"
    return None


def timestep_range(settings: ScorerSettings, num_train_timesteps: int) -> tuple[int, int]:
    """[t_min, t_max] of the settings on this model; UnsupportedSettings (a ValueError) if it does not fit."""
    problem = timestep_range_problem(settings, num_train_timesteps)
    if problem:
        raise UnsupportedSettings(problem)
    return settings.t_min, num_train_timesteps - 1 if settings.t_max is None else settings.t_max


def draw_timesteps(settings: ScorerSettings, num_train_timesteps: int, draw_indices: torch.Tensor,
                   image_seed: int) -> torch.Tensor:
    """Integer timesteps for the given draw indices of one image.

    Stratified grids get a per-image random shift (from `image_seed`), so they differ
    between images while staying evenly spaced within each image.
    """
    t_min, t_max = timestep_range(settings, num_train_timesteps)
    span = t_max - t_min + 1
    if settings.timesteps == "stratified":
        offset = unit_float(mix_seed(image_seed, 0x5EED))
        u = torch.remainder(van_der_corput(draw_indices) + offset, 1.0)
    else:  # uniform: one hash-derived uniform number per draw
        u = torch.tensor([unit_float(mix_seed(image_seed, int(i), 0x7157)) for i in draw_indices],
                         dtype=torch.float64)
    return (t_min + torch.floor(u * span)).clamp(t_min, t_max).to(torch.int64)


def draw_noise(image_seed: int, draw_index: int, shape: tuple, device: torch.device | str = "cpu",
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gaussian noise of one draw, seeded by (image seed, draw index) alone: independent of batch
    size, class order, worker count and of how many draws are requested at once. `out` (a
    contiguous float32 CPU tensor of `shape`, e.g. a row of a pass's noise table) receives the
    same values without a copy."""
    generator = torch.Generator().manual_seed(mix_seed(image_seed, draw_index))
    if out is not None:
        return torch.randn(shape, generator=generator, out=out)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


__all__ = ["mix_seed", "unit_float", "image_key_from_pixels", "van_der_corput", "timestep_range_problem",
           "timestep_range", "draw_timesteps", "draw_noise"]
