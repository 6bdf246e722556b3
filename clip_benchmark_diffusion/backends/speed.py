"""Speed switches for a backend's denoiser, shared by every model family.

They change how a call runs, not what it computes (up to float rounding). All are off by
default: none has been measured to help on this project's hardware yet, and
`benchmarks/gpu_throughput.py` is where each one has to earn its place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..settings import COMPILE_MODES


@dataclass(frozen=True)
class SpeedOptions:
    """channels_last: NHWC weights and inputs (faster convolutions on tensor cores).
    compile_mode: `torch.compile` the denoiser in this mode ("off": eager).
    static_batch: with compilation, the most rows per call; shorter calls are padded to the
        next power of two, so a handful of compiled graphs (CUDA graphs) serve every call;
        0 = no padding."""

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
    # static shapes: the calls come in a few padded sizes (see `padded_size`), one graph each
    return torch.compile(module, mode=None if options.compile_mode == "default" else options.compile_mode,
                         dynamic=False)


def padded_size(rows: int, static_batch: int) -> int:
    """Rows a compiled call is padded to: the next power of two, at most `static_batch`, so a
    short last batch does not cost a full one and only ~log2(batch) graphs are ever built."""
    return min(1 << max(rows - 1, 0).bit_length(), static_batch) if static_batch else rows


def run_denoiser(denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
                 sample: torch.Tensor, timesteps: torch.Tensor, context: Any,
                 options: SpeedOptions) -> torch.Tensor:
    """`denoise(sample, timesteps, context)` for a batch (`context`: a tensor or a
    `Conditioning`, sliced row-wise). When compiled, calls go in chunks of
    at most `static_batch` rows, each padded to `padded_size` (repeating its first row; the
    padding is cut off again)."""
    timesteps = timesteps.reshape(-1).expand(len(sample))
    if options.compile_mode == "off" or not options.static_batch:
        return _call(denoise, sample, timesteps, context, options)
    outputs = []
    for start in range(0, len(sample), options.static_batch):
        chunk = [x[start:start + options.static_batch] for x in (sample, timesteps, context)]
        rows = len(chunk[0])
        pad = padded_size(rows, options.static_batch) - rows
        if pad > 0:
            chunk = [_pad(x, pad) for x in chunk]
        outputs.append(_call(denoise, *chunk, options)[:rows])
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _pad(x: Any, pad: int) -> Any:
    """`x` with its first row repeated `pad` more times (a tensor, or every field of a Conditioning)."""
    if hasattr(x, "map"):
        return x.map(lambda v: _pad(v, pad))
    return torch.cat([x, x[:1].expand(pad, *x.shape[1:])])


def _call(denoise: Callable, sample: torch.Tensor, timesteps: torch.Tensor, context: Any,
          options: SpeedOptions) -> torch.Tensor:
    if options.channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    output = denoise(sample, timesteps, context)
    # a CUDA graph overwrites its output buffer on the next replay: keep our own copy
    return output.clone() if options.compile_mode == "reduce-overhead" else output
