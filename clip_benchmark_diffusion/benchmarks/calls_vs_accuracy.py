"""Accuracy against UNet calls per image for fixed budgets, t-test elimination and Li et al.'s
schedules, on the reference world, all on the same draws.

    python -m clip_benchmark_diffusion.benchmarks.calls_vs_accuracy --pretrained ref-world \\
        --tasks shape colour_shape --images 120 --out results/calls_vs_accuracy

Every configuration uses the same seeded (t, noise) draws per image; the largest fixed budget is
computed first and its per-(image, draw, prompt) errors are shared through the scorer's error
cache, so the other strategies spend (and are charged) exactly the calls they would make, but
the benchmark computes each error once.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoints import load_backend
from ..scorer import DiffusionScorer
from ..settings import ScorerSettings
from .calibration import expected_calibration_error, fit_binning


@dataclass
class Row:
    task: str
    name: str
    accuracy: float
    calls_per_image: float
    ece_calls: float
    ece_calls_binned: float
    ece_softmax: float


def li_schedule(num_classes: int, budget: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Li et al.'s keep-lists, with their cumulative draws scaled from 500 to `budget`:
    CIFAR-10-like (<= 10 classes) keep 5,1 at 50,500; Food/Flowers-like keep 20,10,5,1 at 20,50,100,500."""
    if num_classes <= 10:
        keep, draws = (min(5, num_classes - 1), 1), (50, 500)
    else:
        keep, draws = (20, 10, 5, 1), (20, 50, 100, 500)
    scaled: list[int] = []
    for d in draws:  # at least 2 draws per stage, strictly increasing
        scaled.append(max(2, round(d * budget / 500), scaled[-1] + 1 if scaled else 0))
    return tuple(keep), tuple(scaled)


def configurations(num_classes: int, budgets: list[int], p_values: list[float], min_draws: list[int],
                   base: ScorerSettings):
    """(name, settings) of every strategy compared; the largest fixed budget comes first."""
    largest = max(budgets)
    yield f"fixed {largest}", base.replace(draws=largest)
    for budget in sorted(budgets, reverse=True)[1:]:
        yield f"fixed {budget}", base.replace(draws=budget)
    for first in min_draws:
        for p in p_values:
            yield (f"t-test p={p:g} min={first}",
                   base.replace(strategy="ttest", draws=largest, ttest_p=p, min_draws=first,
                                round_draws=max(1, min(4, first // 4))))
    keep, draws = li_schedule(num_classes, largest)
    label = ",".join(f"{k}@{d}" for k, d in zip(keep, draws))
    yield f"Li schedule {label}", base.replace(strategy="schedule", schedule_keep=keep, schedule_draws=draws)


def task_data(task: str, images: int, seed: int, transform) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    from ..world import TEMPLATES, classification_samples, classnames

    samples = list(classification_samples(task, images, seed=seed))
    pixels = torch.stack([transform(image) for image, _ in samples])
    labels = torch.tensor([label for _, label in samples])
    candidates = [[template.format(c=name) for template in TEMPLATES] for name in classnames(task)]
    return pixels, labels, candidates


def run(args: argparse.Namespace) -> list[Row]:
    backend = load_backend(args.pretrained, device=args.device)
    base = ScorerSettings(batch_size=args.batch_size, seed=args.seed,
                          t_min=args.t_range[0] if args.t_range else 0,
                          t_max=args.t_range[1] if args.t_range else None)
    rows: list[Row] = []
    images = dict(zip(args.tasks, args.images * len(args.tasks) if len(args.images) == 1 else args.images))
    for task in args.tasks:
        pixels, labels, candidates = task_data(task, images[task], args.data_seed, backend.image_transform())
        cache: dict = {}
        for name, settings in configurations(len(candidates), args.budgets, args.p_values, args.min_draws, base):
            scorer = DiffusionScorer(backend, settings, error_cache=cache)
            results = []
            started = time.time()
            for start in tqdm(range(0, len(pixels), args.image_batch), desc=f"{task}: {name}", leave=False):
                results += scorer.score(pixels[start:start + args.image_batch], candidates)
            correct = np.array([r.prediction == int(y) for r, y in zip(results, labels)])
            confidence = np.array([r.confidence for r in results])
            half = len(results) // 2  # calibrate on one half, measure on the other
            binned = fit_binning(confidence[:half], correct[:half])(confidence[half:])
            rows.append(Row(task, name, float(correct.mean()), float(np.mean([r.calls for r in results])),
                            expected_calibration_error(confidence, correct),
                            expected_calibration_error(binned, correct[half:]),
                            expected_calibration_error([r.softmax_confidence for r in results], correct)))
            print(f"{task:13s} {name:28s} acc {rows[-1].accuracy:6.1%}  calls/img {rows[-1].calls_per_image:8.1f}"
                  f"  ({time.time() - started:.0f} s)", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| task | strategy | accuracy | UNet calls / image | calls vs largest budget | ECE (calls) | "
             "ECE (calls, binned on held-out half) | ECE (softmax) |", "|" + "---|" * 8]
    for row in rows:
        largest = max((r for r in rows if r.task == row.task and r.name.startswith("fixed")),
                      key=lambda r: r.calls_per_image)
        lines.append(f"| {row.task} | {row.name} | {row.accuracy:.1%} | {row.calls_per_image:.0f} | "
                     f"1/{largest.calls_per_image / row.calls_per_image:.1f} | {row.ece_calls:.3f} | "
                     f"{row.ece_calls_binned:.3f} | {row.ece_softmax:.3f} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in rows}, key=[r.task for r in rows].index)
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for family, marker in (("fixed", "o-"), ("t-test", "s"), ("Li", "^")):
            subset = sorted((r for r in rows if r.task == task and r.name.startswith(family)),
                            key=lambda r: r.calls_per_image)
            axis.plot([r.calls_per_image for r in subset], [100 * r.accuracy for r in subset], marker,
                      label=family if family != "Li" else "Li et al. schedule")
            for r in subset:
                axis.annotate(r.name.split(" ", 1)[1], (r.calls_per_image, 100 * r.accuracy), fontsize=7)
        axis.set_xscale("log")
        axis.set(title=task, xlabel="UNet calls per image", ylabel="accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default="ref-world")
    parser.add_argument("--tasks", nargs="+", default=["shape", "colour_shape"])
    parser.add_argument("--images", type=int, nargs="+", default=[48], help="test images per task (one per task, or one for all)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--p_values", type=float, nargs="+", default=[1e-1, 2e-2, 2e-3])
    parser.add_argument("--min_draws", type=int, nargs="+", default=[20, 8],
                        help="t-test: draws before the first test (the paper: 20); rounds add min_draws/4 (<= 4)")
    parser.add_argument("--t_range", type=int, nargs=2, default=None)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--image_batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_seed", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="results/calls_vs_accuracy")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    rows = run(args)
    text = table(rows)
    print(text)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out, "rows.json"), "w") as handle:
        json.dump([row.__dict__ for row in rows], handle, indent=1)
    plot(rows, os.path.join(args.out, "calls_vs_accuracy.png"))
    print(f"wrote {args.out}/table.md, rows.json, calls_vs_accuracy.png in {time.time() - started:.0f} s "
          f"(images per task {args.images}, torch {torch.__version__}, device {args.device})")


if __name__ == "__main__":
    main()
