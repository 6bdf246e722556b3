"""What the scorer itself costs per UNet row when the network costs nothing.

    python -m clip_benchmark_diffusion.benchmarks.host_overhead [--scale 1.0] [--repeats 2]

A backend with Stable Diffusion 2-base shapes (4x64x64 latents, 77x1024 float16 text states kept
in host memory, as the real backend keeps them) whose `predict` does no work is scored on one CPU
thread in three settings: 10 classes x 64 fixed draws, 1000 classes under Li et al.'s ImageNet
keep-list (500@50, 50@100, 10@500, 1@1000) with its draws divided by 10, and 100 classes x 80
templates (`average_errors`). Every UNet row left over is scorer overhead.

Times are CPU time of the scoring thread (`time.thread_time`), so other processes on a shared
machine inflate them less than wall time. The split: "tensor math" is the CPU time spent inside
the calls that would run on the accelerator, timed in the run itself: the schedule's `add_noise`
and `errors`, the network's `predict` (here only its dtype/device moves) and the scorer's on-device
row gathers and dtype casts (`take_rows`, `as_network_input`, where the scorer has them); "host
work" is the rest of the scoring thread's time (Python bookkeeping, stacking conditionings for the
copy, syncs, strategies). Noise generation on the CPU generator (`draw_noise`: a draw's 16384 normal
samples, which keep the draws the same on every device, shared by all the rows of that draw) runs on
the scorer's noise thread, passes ahead (`passes.noise_thread`), and that thread's CPU time is
printed on its own (before the noise thread existed, it was part of host work). The candidates are
prepared once beforehand (`DiffusionScorer.prepare`: prompts encoded, conditionings on the device),
as a run does once for all its images.
One SD2-base row at 50% of an H100's bf16 peak (804 GFLOP at ~395 TFLOP/s) is printed beside them.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import passes as passes_module
from ..backends.base import Conditioning, DiffusionBackend
from ..schedules import DiscreteSchedule
from ..scorer import DiffusionScorer
from ..settings import ScorerSettings

take_rows = getattr(passes_module, "take_rows", None)  # on-device row gathers (absent before issue 11)
as_network_input = getattr(passes_module, "as_network_input", None)  # on-device dtype casts (absent before)
draw_noise = passes_module.draw_noise

LATENT = (4, 64, 64)
TEXT = (77, 1024)
#: one SD2-base UNet row (batch 1, 64x64 latents, CFG off) and half of an H100 SXM's dense bf16 peak
GFLOP_PER_ROW = 804.0
HALF_H100_TFLOPS = 395.0
TARGET_TOTAL_US, TARGET_HOST_US = 80.0, 20.0


class ZeroCostBackend(DiffusionBackend):
    """SD2-base shapes and schedule; the network returns its input (no work). Text states are one
    shared host tensor expanded per prompt: each row costs what a real row costs to stack and copy,
    without holding 8000 x 77 x 1024 values in memory."""

    def __init__(self) -> None:
        self.resolution, self.device, self.dtype = 512, torch.device("cpu"), torch.float16
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.noise_process = DiscreteSchedule(torch.cumprod(1 - betas, dim=0), "epsilon")
        self.description = {"backend": "zero-cost"}
        self._states = torch.randn(TEXT, generator=torch.Generator().manual_seed(0)).to(torch.float16)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(pixels.sum() * 1000) & 0xFFFF)
        return torch.randn((len(pixels), *LATENT), generator=generator)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return Conditioning(states=self._states.expand(len(prompts), *TEXT))

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        conditioning.to(self.device, self.dtype)  # what the real backend does before its network
        return x_t.to(self.device, self.dtype)


@dataclass
class Case:
    name: str
    classes: int
    templates: int
    settings: ScorerSettings
    images: int


def cases(scale: float) -> list[Case]:
    """The three settings of issue 11; `scale` < 1 shrinks classes and draws (a toy run)."""
    def n(value: int) -> int:
        return max(1, round(value * scale))

    li_draws = tuple(sorted({n(d) for d in (5, 10, 50, 100)}))
    li_keep = (n(500), n(50), n(10), 1)[-len(li_draws):]
    return [
        Case("10 classes x 64 draws, fixed", 10, 1,
             ScorerSettings(strategy="fixed", templates="average_errors", draws=n(64)), 4),
        Case(f"{n(1000)} classes, keep-list {'/'.join(map(str, li_keep))} @ {'/'.join(map(str, li_draws))} draws",
             n(1000), 1, ScorerSettings(strategy="schedule", schedule_keep=li_keep, schedule_draws=li_draws,
                                        max_candidates=100_000), 1),
        Case(f"{n(100)} classes x {n(80)} templates, average_errors, {n(2)} draws", n(100), n(80),
             ScorerSettings(strategy="fixed", draws=n(2), templates="average_errors"), 1),
    ]


def timed(function: Callable, spent: list[float]) -> Callable:
    """`function`, adding the CPU time of the thread that calls it to `spent[0]`."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[0] += time.thread_time() - start

    return wrapper


def run_case(case: Case, repeats: int) -> dict:
    """Best of `repeats` whole `score` calls (prompts encoded beforehand), per UNet row. The calls
    that run on the accelerator (noising, the network's moves, the error, and on-device row
    gathers and casts where the scorer has them) are timed inside the run: that is the tensor math."""
    backend = ZeroCostBackend()
    candidates = [[f"template {t} of class {c}." for t in range(case.templates)] for c in range(case.classes)]
    scorer = DiffusionScorer(backend, case.settings)
    if hasattr(scorer, "prepare"):
        scorer.prepare(candidates)
    else:  # before issue 11
        scorer.encode_prompts([p for c in candidates for p in c])
    math, noise = [0.0], [0.0]
    schedule = scorer.schedule
    schedule.add_noise = timed(schedule.add_noise, math)
    backend.predict = timed(backend.predict, math)
    device_work = {name: function for name, function in (("take_rows", take_rows),
                                                          ("as_network_input", as_network_input),
                                                          ("schedule_errors", passes_module.schedule_errors))
                   if function}
    for name, function in device_work.items():
        setattr(passes_module, name, timed(function, math))
    passes_module.draw_noise = timed(draw_noise, noise)
    pixels = torch.zeros(case.images, 3, 8, 8)
    best = None
    try:
        for repeat in range(repeats):
            math[0] = noise[0] = 0.0
            start = time.thread_time()
            results = scorer.score(pixels, candidates, image_keys=[repeat * 1000 + k for k in range(case.images)])
            total = time.thread_time() - start
            if best is None or total < best[0]:
                best = (total, math[0], noise[0], sum(r.calls for r in results))
    finally:
        for name, function in device_work.items():
            setattr(passes_module, name, function)
        passes_module.draw_noise = draw_noise
    total, math_seconds, noise_seconds, rows = best
    return {"case": case.name, "rows": rows, "total_us": total / rows * 1e6, "math_us": math_seconds / rows * 1e6,
            "host_us": (total - math_seconds) / rows * 1e6, "noise_us": noise_seconds / rows * 1e6}


def floors(repeats: int, batch: int = 64) -> dict:
    """What no scorer avoids on this machine, best of `repeats` (CPU time): one draw's noise on the
    CPU generator (host work, shared by the rows of that draw), and gathering one row's network
    inputs (a 4x64x64 float32 latent and a 77x1024 float16 text state) into reused buffers at
    `batch` rows per pass (tensor math on a CPU device, memory-bound)."""
    latent_out, text_out = torch.empty(batch, *LATENT), torch.empty(batch, *TEXT, dtype=torch.float16)
    latents, texts = torch.randn(8, *LATENT), torch.randn(10, *TEXT).to(torch.float16)
    index = torch.arange(batch)
    noise, gather = float("inf"), float("inf")
    for _ in range(max(repeats, 3)):
        start = time.process_time()
        for j in range(20):
            draw_noise(0, j, LATENT)
        noise = min(noise, (time.process_time() - start) / 20)
        start = time.process_time()
        for _ in range(5):
            torch.index_select(latents, 0, index % len(latents), out=latent_out)
            torch.index_select(texts, 0, index % len(texts), out=text_out)
        gather = min(gather, (time.process_time() - start) / (5 * batch))
    return {"noise_per_draw_us": noise * 1e6, "gather_per_row_us": gather * 1e6}


def table(results: list[dict]) -> str:
    h100_us = GFLOP_PER_ROW / (HALF_H100_TFLOPS * 1e3) * 1e6
    lines = ["| setting | UNet rows | total us/row | host work us/row | tensor math us/row | "
             "noise generation us/row (noise thread) | SD2-base row at 50% H100 bf16 peak, us |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['rows']} | {r['total_us']:.1f} | {r['host_us']:.1f} | {r['math_us']:.1f} "
                     f"| {r['noise_us']:.1f} | {h100_us:.0f} |")
    lines.append(f"\nTargets: total <= {TARGET_TOTAL_US:.0f}, host work <= {TARGET_HOST_US:.0f} us per row "
                 "(CPU time of the scoring thread, torch on one thread, zero-cost network; no GPU measured). "
                 "Noise generation is the noise thread's CPU time, off the scoring thread.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink classes and draws (toy runs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with torch.no_grad():
        results = [run_case(case, args.repeats) for case in cases(args.scale)]
    print(table(results))
    floor = floors(args.repeats)
    print(f"\nFloors on this machine: one draw's noise (16384 normal samples on the CPU generator, the same on "
          f"every device) {floor['noise_per_draw_us']:.0f} us, shared by the rows of that draw; gathering one "
          f"row's network inputs (64 KB latent + 158 KB text state) into reused buffers "
          f"{floor['gather_per_row_us']:.1f} us.")
    print(f"\n({time.perf_counter() - started:.0f} s wall clock, torch {torch.__version__}, {args.threads} thread(s))")
    return results


if __name__ == "__main__":
    main()
