"""UNet throughput of the full-size Stable Diffusion 2-base architecture (random weights).

    python -m clip_benchmark_diffusion.benchmarks.gpu_throughput              # CUDA, 512 px, bf16
    python -m clip_benchmark_diffusion.benchmarks.gpu_throughput --toy        # any machine, tiny UNet

Speed does not depend on weight values, so the architecture is built from its config with
random weights (no download). Reports UNet calls per second, achieved TFLOP/s (FLOPs counted by
torch's FlopCounterMode on one forward pass), the bf16 matmul peak measured in the same run,
the fraction of that peak, and seconds per image for a 10-class decision at a given call budget.
The speed switches are the scorer's own (`backends/speed.py`), and `--variants` measures several
of them in one run so their effect can be compared on the same machine:

    python -m clip_benchmark_diffusion.benchmarks.gpu_throughput --variants eager channels_last \\
        channels_last+compile channels_last+cuda_graphs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import torch

from ..backends.speed import SpeedOptions, prepare_denoiser, run_denoiser

#: UNet2DConditionModel config of stabilityai/stable-diffusion-2-base (512 px, epsilon)
SD2_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    use_linear_projection=True, norm_num_groups=32,
)
TOY_UNET = dict(SD2_BASE_UNET, sample_size=8, block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 4, 4, 4),
                cross_attention_dim=64)
TEXT_TOKENS = 77
#: variant name -> speed options (the batch is filled in per measurement)
VARIANTS = {
    "eager": SpeedOptions(),
    "channels_last": SpeedOptions(channels_last=True),
    "compile": SpeedOptions(compile_mode="max-autotune-no-cudagraphs"),
    "cuda_graphs": SpeedOptions(compile_mode="reduce-overhead"),
    "channels_last+compile": SpeedOptions(channels_last=True, compile_mode="max-autotune-no-cudagraphs"),
    "channels_last+cuda_graphs": SpeedOptions(channels_last=True, compile_mode="reduce-overhead"),
}


def build_unet(config: dict, device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config).to(device=device, dtype=dtype).eval().requires_grad_(False)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str, repeats: int) -> float:
    """Mean seconds per call after two warm-up calls."""
    for _ in range(2):
        function()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int, repeats: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats)
    return 2 * size ** 3 / seconds / 1e12


def forward_flops(unet, inputs: tuple) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(*inputs[:2], encoder_hidden_states=inputs[2])
    return counter.get_total_flops()


def _figure(value: float) -> float:
    """Four significant digits: enough for a report, whatever the scale (CPU toy or H100)."""
    return float(f"{value:.4g}")


def measure_variant(name: str, config: dict, device: str, dtype: torch.dtype, batch_sizes: list[int],
                    peak: float, calls_per_image: float, repeats: int) -> tuple[list[dict], int]:
    """Rows (one per batch size) for one speed variant, on a freshly built UNet, and its size."""
    unet = build_unet(config, device, dtype)
    latent = config["sample_size"]
    rows = []
    for batch in batch_sizes:
        speed = dataclasses.replace(VARIANTS[name], static_batch=batch)
        torch._dynamo.reset()  # each measurement compiles its own fixed-shape graph
        denoiser = prepare_denoiser(unet, speed)
        x = torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)
        t = torch.randint(0, 1000, (batch,), device=device)
        cond = torch.randn(batch, TEXT_TOKENS, config["cross_attention_dim"], device=device, dtype=dtype)
        flops = forward_flops(unet, (x, t, cond)) / batch
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            seconds = timed(lambda: run_denoiser(lambda a, b, c: denoiser(a, b, encoder_hidden_states=c).sample,
                                                 x, t, cond, speed), device, repeats)
        calls_per_second = batch / seconds
        achieved = flops * calls_per_second / 1e12
        row = {"variant": name, "batch": batch, "unet_calls_per_s": _figure(calls_per_second),
               "gflop_per_call": _figure(flops / 1e9), "achieved_tflops": _figure(achieved),
               "fraction_of_peak": _figure(achieved / peak),
               "seconds_per_10_class_image": _figure(calls_per_image / calls_per_second)}
        if device.startswith("cuda"):
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
        print(f"{name:26s} batch {batch:4d}: {calls_per_second:8.1f} UNet calls/s, {flops / 1e9:.1f} GFLOP/call, "
              f"{achieved:.1f} TFLOP/s = {achieved / peak:.0%} of peak, "
              f"{row['seconds_per_10_class_image']:.3f} s per 10-class image at {calls_per_image:g} calls", flush=True)
    return rows, sum(p.numel() for p in unet.parameters())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="tiny UNet at 8x8 latents (runs anywhere)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["eager"],
                        help="speed switches to measure, each on a fresh UNet")
    parser.add_argument("--calls_per_image", type=float, default=300.0,
                        help="UNet calls a pruned 10-class decision spends: Clark & Jaini's t-test needs 10 x 20 "
                             "first draws plus a few rounds for the contenders")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="results/gpu_throughput.json")
    args = parser.parse_args(argv)

    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    config = TOY_UNET if args.toy else SD2_BASE_UNET
    batch_sizes = args.batch_sizes or ([8, 32] if args.toy or device == "cpu" else [8, 32, 64, 128])
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak_tflops(device, dtype, 8192 if device.startswith("cuda") else 1024, args.repeats)
    report = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
              "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "toy": args.toy,
              "resolution_px": config["sample_size"] * 8, "matmul_peak_tflops": _figure(peak), "rows": []}
    print(f"{report['device']}, torch {report['torch']}, {report['dtype']}, {report['resolution_px']} px, "
          f"measured matmul peak {peak:.1f} TFLOP/s")
    for name in args.variants:
        rows, report["unet_parameters"] = measure_variant(name, config, device, dtype, batch_sizes, peak,
                                                          args.calls_per_image, args.repeats)
        report["rows"] += rows
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    return report


if __name__ == "__main__":
    main()
