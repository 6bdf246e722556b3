"""Helpers shared by the reference training scripts and the quick evaluation.

Kept separate so both trainers use one definition of "the data", of the time budget and of the
loss log, and so the evaluation sees images exactly as training did.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from typing import Callable, Iterable, NamedTuple, Optional

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when available (much faster), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed every generator the trainers touch, so a run is repeatable on one machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def schedule_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, budget: "TimeBudget",
                           warmup_steps: int) -> None:
    """Set every parameter group to the warm-up + cosine rate of the budget's progress."""
    factor = warmup_cosine(budget.fraction(), budget.step, warmup_steps=warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor


def start_run(threads: int, seed: int, device: str) -> torch.device:
    """The common start of a training script: CPU threads (1 is much faster on a busy CPU),
    seeds, and the device."""
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    return pick_device(device)


def images_to_tensor(images: Iterable) -> torch.Tensor:
    """PIL RGB images -> float tensor [N, 3, H, W] in [-1, 1] (the range SD's VAE expects)."""
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def world_dataset(num_samples: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`num_samples` (image, caption) pairs of the synthetic world, images as a [-1, 1] tensor."""
    from clip_benchmark_diffusion.world import training_samples

    images, captions = [], []
    for image, caption in training_samples(num_samples, seed=seed):
        images.append(image)
        captions.append(caption)
    return images_to_tensor(images), captions


class TimeBudget:
    """Stops training after `max_steps` steps or `minutes` of wall time, whichever comes first.

    `fraction()` is the progress in [0, 1] used by the learning-rate schedule, so a time-limited
    run still anneals its learning rate to the end.
    """

    def __init__(self, minutes: Optional[float], max_steps: Optional[int]):
        if minutes is None and max_steps is None:
            raise ValueError("give a time budget (minutes) or a number of steps")
        self.seconds = None if minutes is None else 60.0 * minutes
        self.max_steps = max_steps
        self.start = time.monotonic()
        self.step = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fraction(self) -> float:
        parts = []
        if self.seconds is not None:
            parts.append(self.elapsed() / max(self.seconds, 1e-9))
        if self.max_steps is not None:
            parts.append(self.step / max(self.max_steps, 1))
        return min(1.0, max(parts))

    def done(self) -> bool:
        return self.fraction() >= 1.0


def warmup_cosine(fraction: float, step: int, warmup_steps: int, floor: float = 0.05) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to `floor` at the end of the budget."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


class LossLog:
    """Append-only CSV of training metrics, flushed on every row so a killed run keeps its log."""

    def __init__(self, path: str, fields: list[str]):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fields = fields
        self._handle = open(path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=fields)
        self._writer.writeheader()

    def write(self, **row: float) -> None:
        self._writer.writerow({key: row.get(key, "") for key in self.fields})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def finish_step(phase: str, budget: "TimeBudget", optimizer: torch.optim.Optimizer, log: LossLog, progress,
                shown: dict, **values: float) -> None:
    """Count the step, log it (time, learning rate, `values`) and show `shown` on the progress bar."""
    budget.step += 1
    log.write(phase=phase, step=budget.step, seconds=round(budget.elapsed(), 2), lr=optimizer.param_groups[0]["lr"],
              **values)
    progress.update(1)
    progress.set_postfix(**shown)


class EMA:
    """Exponential moving average of parameters, with the usual warm-up so short runs still benefit."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float):
        self.params = [p for p in parameters]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for param, shadow in zip(self.params, self.shadow):
            param.copy_(shadow)


def make_readable(path: str) -> None:
    """chmod a+r a saved file or every file under a folder: safetensors writes 0600 files,
    which would be unreadable for other users once shipped inside an installed package."""
    paths = [path] if os.path.isfile(path) else [os.path.join(root, name)
                                                  for root, _, names in os.walk(path) for name in names]
    for item in paths:
        os.chmod(item, os.stat(item).st_mode | 0o444)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_with_budget(parameters: list[torch.nn.Parameter], batch_loss: Callable[[], torch.Tensor], *, phase: str,
                      lr: float, weight_decay: float, ema_decay: float, minutes: Optional[float],
                      steps: Optional[int], log: LossLog, warmup_steps: int = 100) -> int:
    """The denoiser training loop both reference trainers share: AdamW with warm-up + cosine to the
    end of a wall-clock/step budget, gradient clipping at 1, an EMA copied into the model at the end.

    `batch_loss()` draws its own batch (so each trainer owns its data, noise process and
    conditioning) and returns the loss to minimise. Returns the number of steps run.
    """
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    ema = EMA(parameters, ema_decay) if ema_decay > 0 else None
    budget = TimeBudget(minutes, steps)
    from tqdm.auto import tqdm

    progress = tqdm(desc=phase, unit="step", total=steps)
    running = None
    while not budget.done():
        schedule_learning_rate(optimizer, lr, budget, warmup_steps=warmup_steps)
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if ema is not None:
            ema.update()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        finish_step(phase, budget, optimizer, log, progress, {"loss": f"{running:.4f}"}, loss=loss.item())
    progress.close()
    if ema is not None:
        ema.copy_to_model()
    return budget.step


# --------------------------------------------------------------------------- what the denoiser trainers share
def add_denoiser_arguments(parser: argparse.ArgumentParser, *, minutes_help: str, steps_help: str, init_help: str,
                           batch_size: int, lr: float) -> None:
    """The options both reference diffusion trainers take (budget, data, device, optimiser, saving);
    each trainer adds its architecture flags."""
    parser.add_argument("--out", required=True, help="output folder of the diffusers pipeline")
    parser.add_argument("--minutes", type=float, default=None, help=minutes_help)
    parser.add_argument("--steps", type=int, default=None, help=steps_help)
    parser.add_argument("--init", default=None, help=init_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=30000, help="distinct world samples to train on")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--ema-decay", type=float, default=0.995, help="0 disables the EMA")
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--float32", action="store_true", help="save float32 weights instead of float16")


def require_budget(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A trainer needs a wall-clock budget, a step count, or both."""
    if args.minutes is None and args.steps is None:
        parser.error("give --minutes and/or --steps")


class DenoiserRun(NamedTuple):
    """What a denoiser trainer has once it has started: its device and generator, the clock
    (`started`, time.monotonic), the open loss log, and the world's samples with the seconds they took."""

    device: torch.device
    generator: torch.Generator
    started: float
    log: "LossLog"
    images: torch.Tensor
    captions: list
    data_seconds: float


def begin_denoiser_run(args: argparse.Namespace, log_fields: list[str]) -> DenoiserRun:
    """The common start of both denoiser trainers: threads, seeds and device, the output folder
    with its `training_log.csv`, and `args.samples` world samples."""
    device = start_run(args.threads, args.seed, args.device)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    log = LossLog(os.path.join(args.out, "training_log.csv"), log_fields)
    images, captions = world_dataset(args.samples, seed=args.seed)
    return DenoiserRun(device, generator, started, log, images, captions, time.monotonic() - started)


def remaining_minutes(minutes: Optional[float], started: float) -> Optional[float]:
    """What is left of a wall-clock budget of `minutes` begun at `started` (time.monotonic)."""
    return None if minutes is None else max(0.0, minutes - (time.monotonic() - started) / 60.0)


def write_summary(out: str, summary: dict, shown: tuple[str, ...]) -> None:
    """`training_summary.json` beside the weights (provenance of shipped models); print the `shown` keys."""
    with open(os.path.join(out, "training_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps({key: summary[key] for key in shown}))
