"""Speed switches for a backend's denoiser, shared by every model family.

They change how a call runs, not what it computes (up to float rounding). All are off by
default: none has been measured to help on this project's hardware yet, and
`benchmarks/gpu_throughput.py` is where each one has to earn its place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..settings import COMPILE_MODES


@dataclass(frozen=True)
class SpeedOptions:
    """channels_last: NHWC weights and inputs (faster convolutions on tensor cores).
    compile_mode: `torch.compile` the denoiser in this mode ("off": eager).
    static_batch: with compilation, pad every call to this many rows, so one compiled graph
        (one CUDA graph) serves the short last batch of a round too; 0 = no padding."""

    channels_last: bool = False
    compile_mode: str = "off"
    static_batch: int = 0

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")


def prepare_denoiser(module: torch.nn.Module, options: SpeedOptions) -> Callable:
    """The module, in the memory format and compiled as `options` say."""
    if options.channels_last:
        module.to(memory_format=torch.channels_last)
    if options.compile_mode == "off":
        return module
    return torch.compile(module, mode=None if options.compile_mode == "default" else options.compile_mode)


def run_denoiser(denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 options: SpeedOptions) -> torch.Tensor:
    """`denoise(sample, timesteps, context)` for a batch, padded to `static_batch` rows when
    compiled (the padding repeats the first row and is cut off again)."""
    rows = len(sample)
    pad = options.static_batch - rows if options.compile_mode != "off" else 0
    if pad > 0:
        sample, timesteps, context = (torch.cat([x, x[:1].expand(pad, *x.shape[1:])]) for x in
                                      (sample, timesteps, context))
    if options.channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    output = denoise(sample, timesteps, context)[:rows]
    # a CUDA graph overwrites its output buffer on the next replay: keep our own copy
    return output.clone() if options.compile_mode == "reduce-overhead" else output
