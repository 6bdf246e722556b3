"""Accuracy against UNet calls per image for fixed budgets, t-test elimination, Li et al.'s
schedules and a CLIP pre-filter, on the reference world or world-C, all on the same draws.

    python -m clip_benchmark_diffusion.benchmarks.calls_vs_accuracy --pretrained ref-world \\
        --tasks shape colour_shape --images 120 --out results/calls_vs_accuracy
    # world-C (or any corruption root `probes robustness` reads): each CORRUPTION/SEVERITY is a task
    python -m clip_benchmark_diffusion.benchmarks.calls_vs_accuracy --root data/world_c/colour_shape \\
        --sets contrast/5 --images 24 --budgets 16 64 256 --error_cache results/cache.pkl

Every configuration uses the same seeded (t, noise) draws per image; the largest fixed budget is
computed first and its per-(image, draw, prompt) errors are shared through the scorer's error
cache, so the other strategies spend (and are charged) exactly the calls they would make, but
the benchmark computes each error once. `--error_cache FILE` keeps that cache between runs, so a
first run with few strategies (to find a setting worth it) pays for every later one. The
pre-filter is the shipped reference CLIP model (`--prefilter ref-world-clip,ref-world`), which
ranks every class once per image.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import time
from dataclasses import dataclass
from typing import Iterator, Optional

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
    family: str  # "fixed", "guaranteed", "t-test", "Li", or "CLIP" (the pre-filter model alone)
    shortlist: int  # CLIP pre-filter top-k (0: none)
    accuracy: float
    calls_per_image: float
    ece_calls: float
    ece_calls_binned: float
    ece_softmax: float
    #: measured without the error cache (rows added with --extra_rows, e.g. Li et al.'s own code); NaN otherwise
    seconds_per_image: float = float("nan")


#: the allocation settings of the package defaults, copied into the benchmark's "defaults" row
DEFAULT_ALLOCATION = ("strategy", "delta", "look_growth", "ttest_p", "min_draws", "round_draws", "ttest_variance")


@dataclass(frozen=True)
class Configuration:
    name: str
    family: str
    settings: ScorerSettings


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


def parse_schedule(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """"5@25,1@250" -> ((5, 1), (25, 250)): keep-lists as `--diffusion_schedule` writes them."""
    stages = [stage.split("@") for stage in text.split(",")]
    return tuple(int(k) for k, _ in stages), tuple(int(d) for _, d in stages)


def configurations(num_classes: int, budgets: list[int], p_values: list[float], min_draws: list[int],
                   variances: list[str], base: ScorerSettings, schedules: tuple = ()) -> Iterator[Configuration]:
    """Every strategy compared on `num_classes` candidates; the largest fixed budget comes first
    (it fills the error cache the others replay). `schedules` adds keep-lists as given (e.g. Li et
    al.'s published ones) to those scaled to each budget."""
    ordered = sorted(set(budgets), reverse=True)
    for budget in ordered:
        yield Configuration(f"fixed {budget}", "fixed", base.replace(draws=budget))
    default = ScorerSettings()  # the rule a run with no --diffusion_* flag uses, its full budget the largest here
    yield Configuration(
        f"defaults: {default.strategy} delta={default.delta:g} min={default.min_draws} "
        f"growth={default.look_growth:g} max={ordered[0]}", "guaranteed",
        base.replace(**{name: getattr(default, name) for name in DEFAULT_ALLOCATION}, draws=ordered[0]))
    for variance in variances:
        for first in min_draws:
            for p in p_values:
                yield Configuration(
                    f"t-test {variance} p={p:g} min={first}", "t-test",
                    base.replace(strategy="ttest", draws=ordered[0], ttest_p=p, min_draws=first,
                                 round_draws=max(1, min(4, first // 4)), ttest_variance=variance))
    scaled = [li_schedule(num_classes, budget) for budget in ordered]
    for keep, draws in dict.fromkeys(scaled + [parse_schedule(text) for text in schedules]):
        label = ",".join(f"{k}@{d}" for k, d in zip(keep, draws))
        yield Configuration(f"Li schedule {label}", "Li",
                            base.replace(strategy="schedule", schedule_keep=keep, schedule_draws=draws))


def task_data(task: str, images: int, seed: int, transform) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    from ..world import TEMPLATES, classification_samples, classnames

    samples = list(classification_samples(task, images, seed=seed))
    pixels = torch.stack([transform(image) for image, _ in samples])
    labels = torch.tensor([label for _, label in samples])
    candidates = [[template.format(c=name) for template in TEMPLATES] for name in classnames(task)]
    return pixels, labels, candidates


def corruption_tasks(root: str, sets: Optional[list[str]]) -> dict[str, object]:
    """{"<root name>/<corruption>/<severity>": its CorruptionSet} under a corruption root (any layout
    `probes robustness` reads), restricted to `sets` ("CORRUPTION/SEVERITY") when given."""
    from ..probes.robustness import find_corruption_sets

    name = os.path.basename(os.path.normpath(root))
    found = {f"{item.corruption}/{item.severity}": item for item in find_corruption_sets(root)}
    missing = sorted(set(sets or ()) - set(found))
    if missing:
        raise SystemExit(f"{root}: no corruption set {', '.join(missing)}; found {', '.join(found)}")
    return {f"{name}/{key}": found[key] for key in (sets or found)}


def set_data(item, images: int, transform) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """The first `images` images of a corruption set, their labels and each class's prompts."""
    data = item.load(transform)
    samples = list(itertools.islice(iter(data), images))
    if len(samples) < images:
        raise SystemExit(f"{item.corruption}/{item.severity} has {len(samples)} images, fewer than --images {images}")
    pixels = torch.stack([image for image, _ in samples])
    labels = torch.tensor([int(label) for _, label in samples])
    candidates = [[template.format(c=name) for template in data.templates] for name in data.classes]
    return pixels, labels, candidates


def load_error_cache(path: Optional[str]) -> dict:
    """The error cache a previous run left at `path` (empty without one)."""
    if path and os.path.exists(path):
        with open(path, "rb") as handle:
            return pickle.load(handle)
    return {}


def save_error_cache(cache: dict, path: Optional[str]) -> None:
    if path:
        with open(path + ".tmp", "wb") as handle:
            pickle.dump(cache, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path + ".tmp", path)


def clip_orders(prefilter: str, pixels: torch.Tensor, candidates: list[list[str]], device: str) -> list[list[int]]:
    """Each image's classes, best first, by the open_clip model `MODEL,PRETRAINED`."""
    from ..prefilter import ClipPrefilter

    model, _, pretrained = prefilter.partition(",")
    return ClipPrefilter(model, pretrained, device=device).rank(pixels, candidates)


def evaluate(name: str, task: str, scorer: DiffusionScorer, pixels: torch.Tensor, labels: torch.Tensor,
             candidates: list[list[str]], image_batch: int, orders: Optional[list[list[int]]], shortlist: int
             ) -> tuple[np.ndarray, list]:
    """Per-image correctness and scores of one configuration."""
    results = []
    for start in tqdm(range(0, len(pixels), image_batch), desc=f"{task}: {name}", leave=False):
        batch_orders = orders[start:start + image_batch] if shortlist else None
        results += scorer.score(pixels[start:start + image_batch], candidates, prior_orders=batch_orders,
                                shortlist_size=shortlist)
    correct = np.array([r.prediction == int(y) for r, y in zip(results, labels)])
    return correct, results


def run(args: argparse.Namespace) -> list[Row]:
    backend = load_backend(args.pretrained, device=args.device)
    # every row is named by its strategy; the fixed budget is the baseline the others are measured against
    base = ScorerSettings(strategy="fixed", templates="average_errors", batch_size=args.batch_size, seed=args.seed,
                          t_min=args.t_range[0] if args.t_range else 0,
                          t_max=args.t_range[1] if args.t_range else None)
    rows: list[Row] = []
    corrupted = corruption_tasks(args.root, args.sets) if args.root else {}
    tasks = list(corrupted) or args.tasks
    images = dict(zip(tasks, args.images * len(tasks) if len(args.images) == 1 else args.images))
    cache: dict = load_error_cache(args.error_cache)  # keys name the image (its pixels) and the draw
    for task in tasks:
        if task in corrupted:
            pixels, labels, candidates = set_data(corrupted[task], images[task], backend.image_transform())
        else:
            pixels, labels, candidates = task_data(task, images[task], args.data_seed, backend.image_transform())
        orders = clip_orders(args.prefilter, pixels, candidates, args.device) if args.prefilter_k else None
        if orders is not None:
            correct = np.array([order[0] == int(y) for order, y in zip(orders, labels)])
            rows.append(Row(task, "CLIP pre-filter model alone (top-1)", "CLIP", 1, float(correct.mean()), 0.0,
                            float("nan"), float("nan"), float("nan")))
        shortlists = [0] + [k for k in args.prefilter_k if 1 < k < len(candidates)]
        for shortlist in shortlists:
            for config in configurations(len(candidates), args.budgets, args.p_values, args.min_draws,
                                         args.variances, base, tuple(args.schedules)):
                name = config.name if not shortlist else f"CLIP top-{shortlist} + {config.name}"
                started = time.time()
                scorer = DiffusionScorer(backend, config.settings, error_cache=cache)
                correct, results = evaluate(name, task, scorer, pixels, labels, candidates, args.image_batch,
                                            orders, shortlist)
                confidence = np.array([r.confidence for r in results])
                half = len(results) // 2  # calibrate on one half, measure on the other
                binned = fit_binning(confidence[:half], correct[:half])(confidence[half:])
                rows.append(Row(task, name, config.family, shortlist, float(correct.mean()),
                                float(np.mean([r.calls for r in results])),
                                expected_calibration_error(confidence, correct),
                                expected_calibration_error(binned, correct[half:]),
                                expected_calibration_error([r.softmax_confidence for r in results], correct)))
                print(f"{task:13s} {name:45s} acc {rows[-1].accuracy:6.1%}  calls/img "
                      f"{rows[-1].calls_per_image:8.1f}  ({time.time() - started:.0f} s)", flush=True)
                if config.family == "fixed" and config.settings.draws == max(args.budgets) and not shortlist:
                    save_error_cache(cache, args.error_cache)  # the largest budget is first: later rows replay it
        save_error_cache(cache, args.error_cache)  # and whatever a t-test drew beyond it
    return rows


def _largest_fixed(rows: list[Row], task: str) -> Row:
    """The reference of a task: the diffusion classifier alone at its largest fixed budget."""
    return max((r for r in rows if r.task == task and r.family == "fixed" and not r.shortlist),
               key=lambda r: r.calls_per_image)


def table(rows: list[Row]) -> str:
    lines = ["| task | strategy | accuracy | UNet calls / image | calls vs largest budget | ECE (calls) | "
             "ECE (calls, binned on held-out half) | ECE (softmax) | s / image (own run) |", "|" + "---|" * 9]
    for row in rows:
        largest = _largest_fixed(rows, row.task)
        fraction = f"1/{largest.calls_per_image / row.calls_per_image:.1f}" if row.calls_per_image else "-"
        eces = " | ".join("-" if value != value else f"{value:.3f}"  # NaN: no diffusion scores to calibrate
                          for value in (row.ece_calls, row.ece_calls_binned, row.ece_softmax))
        seconds = "-" if row.seconds_per_image != row.seconds_per_image else f"{row.seconds_per_image:.2f}"
        lines.append(f"| {row.task} | {row.name} | {row.accuracy:.1%} | {row.calls_per_image:.0f} | {fraction} | "
                     f"{eces} | {seconds} |")
    return "\n".join(lines)


def read_rows(paths: list[str]) -> list[Row]:
    """Rows another script wrote (e.g. `li_adaptive --out`: Li et al.'s own code on the same images)."""
    rows = []
    for path in paths:
        with open(path) as handle:
            rows += [Row(**values) for values in json.load(handle)]
    return rows


def targets(rows: list[Row], tolerance: float = 0.01) -> str:
    """The issue's two targets, per task and pre-filter setting: the cheapest t-test within
    `tolerance` of the largest fixed budget's accuracy and its share of that budget's calls;
    against it, the cheapest Li et al. schedule (same pre-filter) that is at least as accurate,
    and Li et al.'s schedule scaled to the largest budget (the first Li row)."""
    lines = ["| task | pre-filter | largest fixed budget: acc, calls | cheapest t-test within 1 point: acc, calls |"
             " calls saved vs largest (target >= 20x) | cheapest Li schedule at >= its accuracy: acc, calls |"
             " calls saved (target >= 2x) | Li schedule of the largest budget: acc, calls | calls saved |",
             "|" + "---|" * 9]

    def describe(row: Row) -> str:
        return f"{row.name.split(' + ')[-1]}: {row.accuracy:.1%}, {row.calls_per_image:.0f}"

    for task in dict.fromkeys(r.task for r in rows):
        reference = _largest_fixed(rows, task)
        for shortlist in sorted({r.shortlist for r in rows if r.task == task and r.family != "CLIP"}):
            same = [r for r in rows if r.task == task and r.shortlist == shortlist]
            good = [r for r in same if r.family in ("t-test", "guaranteed") and r.accuracy >= reference.accuracy - tolerance - 1e-9]
            line = f"| {task} | {f'CLIP top-{shortlist}' if shortlist else 'none'} | {describe(reference)} |"
            if not good:
                lines.append(line + " none | - | - | - | - | - |")
                continue
            best = min(good, key=lambda r: r.calls_per_image)
            line += f" {describe(best)} | {reference.calls_per_image / best.calls_per_image:.1f}x |"
            li_rows = [r for r in same if r.family == "Li"]
            as_accurate = [r for r in li_rows if r.accuracy >= best.accuracy - 1e-9]
            cheapest = min(as_accurate, key=lambda r: r.calls_per_image) if as_accurate else None
            line += (f" {describe(cheapest)} | {cheapest.calls_per_image / best.calls_per_image:.1f}x |" if cheapest
                     else " none as accurate | - |")
            line += (f" {describe(li_rows[0])} | {li_rows[0].calls_per_image / best.calls_per_image:.1f}x |"
                     if li_rows else " - | - |")
            lines.append(line)
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), squeeze=False)
    colours = {"fixed": "tab:blue", "t-test": "tab:orange", "guaranteed": "tab:red", "Li": "tab:green"}
    markers = "osD^v"  # marker: pre-filter setting (filled: none)
    for axis, task in zip(axes[0], tasks):
        shortlists = sorted({r.shortlist for r in rows if r.task == task and r.family != "CLIP"})
        for shortlist, marker in zip(shortlists, itertools.cycle(markers)):
            for family, colour in colours.items():
                subset = sorted((r for r in rows if r.task == task and r.family == family and r.shortlist == shortlist),
                                key=lambda r: r.calls_per_image)
                label = family if family != "Li" else "Li et al. schedule"
                axis.plot([r.calls_per_image for r in subset], [100 * r.accuracy for r in subset],
                          marker=marker, linestyle="-" if family == "fixed" else "", color=colour,
                          label=label + (f" (CLIP top-{shortlist})" if shortlist else ""),
                          fillstyle="none" if shortlist else "full", alpha=0.8)
        reference = _largest_fixed(rows, task)
        axis.axhline(100 * reference.accuracy - 1, color="grey", lw=0.8, ls=":")
        axis.axvline(reference.calls_per_image / 20, color="grey", lw=0.8, ls=":")
        axis.set_xscale("log")
        axis.set(title=f"{task} (dotted: 1 point below / 1/20 of the largest fixed budget)",
                 xlabel="UNet calls per image", ylabel="accuracy (%)")
        axis.title.set_fontsize(9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default="ref-world")
    parser.add_argument("--tasks", nargs="+", default=["shape", "colour_shape"])
    parser.add_argument("--root", default=None,
                        help="a corruption root (world-C: <out>/<task>; ImageNet-C, CIFAR-10-C): its sets replace --tasks")
    parser.add_argument("--sets", nargs="+", default=None, metavar="CORRUPTION/SEVERITY",
                        help="with --root: only these sets (default: all)")
    parser.add_argument("--extra_rows", nargs="*", default=[], metavar="JSON",
                        help="rows written by another script (li_adaptive --out) to add to the table and targets")
    parser.add_argument("--error_cache", default=None, metavar="FILE",
                        help="keep every computed error in FILE (pickle) and reuse those it holds")
    parser.add_argument("--images", type=int, nargs="+", default=[48], help="test images per task (one per task, or one for all)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--p_values", type=float, nargs="+", default=[1e-1, 2e-2, 2e-3])
    parser.add_argument("--min_draws", type=int, nargs="+", default=[20, 8],
                        help="t-test: draws before the first test (the paper: 20); rounds add min_draws/4 (<= 4)")
    parser.add_argument("--variances", nargs="+", default=["paired", "pooled"], choices=["paired", "pooled"],
                        help="t-test variance estimates compared")
    parser.add_argument("--schedules", nargs="*", default=[], metavar="KEEP@DRAWS,...",
                        help="keep-lists to add as given, e.g. Li et al.'s Pets schedule 5@25,1@250")
    parser.add_argument("--prefilter", default="ref-world-clip,ref-world", metavar="MODEL,PRETRAINED",
                        help="open_clip model of the CLIP pre-filter rows")
    parser.add_argument("--prefilter_k", type=int, nargs="*", default=[5],
                        help="pre-filter shortlist sizes (none: no pre-filter rows)")
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
    extra = read_rows(args.extra_rows)
    tasks = {row.task for row in rows}
    rows += [row for row in extra if row.task in tasks]  # after each task's own rows: `targets` reads Li's first
    text = table(rows) + "\n\nTargets:\n\n" + targets(rows)
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
