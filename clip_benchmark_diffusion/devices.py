"""Host-to-device copies that do not make the host wait for the device.

A blocking copy of a CPU tensor to CUDA synchronises the stream: the host would wait for every
queued network pass to finish before it prepared the next, so host work and device work would
alternate instead of overlapping. The scorer's per-pass copies (row indices, timesteps, noise
scales, weights, noise tables) go through `to_device`: from pinned memory, without waiting;
stream order keeps them correct.
"""
from __future__ import annotations

import torch


def to_device(value: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`value` on `device`; a CPU tensor goes to CUDA from pinned memory without a sync."""
    if value.device == device:  # already there (the common case on a CPU run): no dispatch
        return value
    device = torch.device(device)
    if device.type != "cuda" or value.device.type != "cpu":
        return value.to(device)
    return (value if value.is_pinned() else value.pin_memory()).to(device, non_blocking=True)


__all__ = ["to_device"]
