"""The embedded default: the reference world's experiments, diffusion next to CLIP, offline on CPU.

    python -m clip_benchmark_diffusion demo [--images 100] [--out results/demo] [--data data/world] [--diffusion_* ...]

Writes the world's test sets if they are missing, runs the *unmodified* clip_benchmark `eval`
(in this process, through its own `main`) for the shipped reference diffusion models (SD format
and flow matching) and the shipped reference CLIP model on each task (`--models` picks a subset),
and prints a side-by-side table: accuracy per task, seconds per image and network (UNet / MMDiT)
calls per image.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

#: (task, clip_benchmark task, metric) of the demo
TASKS = {
    "shape": ("zeroshot_classification", "acc1"),
    "colour": ("zeroshot_classification", "acc1"),
    "colour_shape": ("zeroshot_classification", "acc1"),
    "binding": ("image_caption_selection", "text_acc"),
}
DIFFUSION = ("sd-diffusion", "ref-world")
FLOW = ("sd-diffusion", "ref-world-flow")
CLIP = ("ref-world-clip", "ref-world")
#: the demo's models by short name; diffusion ones run with the package defaults (no --diffusion_* flag),
#: as a user's first run would
MODELS = {"ref-world": DIFFUSION, "ref-world-flow": FLOW, "ref-world-clip": CLIP}



@dataclass
class RunResult:
    task: str
    model: str
    score: float
    seconds_per_image: float
    unet_calls_per_image: Optional[float]


def ensure_test_sets(data: str, images: int, tasks: list[str], seed: int) -> dict[str, str]:
    """Write each task's wds folder unless an identical one (same size and seed) is there."""
    from .world import write_test_set

    folders = {}
    for task in tasks:
        folder = os.path.join(data, task)
        info = os.path.join(folder, "info.json")
        current = json.load(open(info)) if os.path.isfile(info) else {}
        if current.get("n") != images or current.get("seed") != seed:
            write_test_set(data, task, images, seed=seed)
        folders[task] = folder
    return folders


def clip_benchmark_eval(arguments: list[str]) -> None:
    """clip_benchmark's own CLI entry point, with these arguments."""
    from clip_benchmark import cli
    from clip_benchmark.metrics import image_caption_selection, zeroshot_classification

    from .console import quiet_third_party_output
    from .registration import register

    register()
    saved = sys.argv
    sys.argv = ["clip_benchmark", "eval", *arguments]
    try:  # the demo's console: its own lines and the diffusion bar, not third-party warnings and bars
        with quiet_third_party_output([zeroshot_classification, image_caption_selection]):
            cli.main()
    finally:
        sys.argv = saved


def run_one(task: str, folder: str, short: str, out: str, extra: list[str]) -> RunResult:
    """One clip_benchmark eval of the model named `short` (a key of MODELS) on one task."""
    model = MODELS[short]
    cb_task, metric = TASKS[task]
    name = f"{task}_{model[0]}" if model == CLIP else f"{task}_{model[0]}_{model[1]}"
    output = os.path.join(out, name + ".json")
    arguments = ["--model", model[0], "--pretrained", model[1], "--dataset", f"wds/{task}", "--dataset_root", folder,
                 "--task", cb_task, "--num_workers", "0", "--batch_size", "16", "--output", output, "--quiet",
                 *extra]
    started = time.time()
    clip_benchmark_eval(arguments)
    seconds = time.time() - started
    result = json.load(open(output))
    images = json.load(open(os.path.join(folder, "info.json")))["n"]
    calls = None
    record = os.path.splitext(output)[0] + ".diffusion.jsonl"
    if model != CLIP and os.path.isfile(record):
        from .records import read_records

        lines = read_records(record)["images"]
        calls = sum(line["calls"] for line in lines) / max(len(lines), 1)
        # each image's own scoring time (images resumed from an earlier record cost nothing now)
        seconds = sum(line["seconds"] for line in lines)
    return RunResult(task, short, float(result["metrics"][metric]), seconds / images, calls)


def table(results: list[RunResult]) -> str:
    """Accuracy of every model side by side, then each diffusion model's cost (seconds and network
    calls per image) and CLIP's seconds per image (whole run, loading included)."""
    by_key = {(r.task, r.model): r for r in results}
    models = list(dict.fromkeys(r.model for r in results))
    diffusion = [m for m in models if MODELS[m] != CLIP]
    header = ["task (metric)"] + [f"`{m}`" for m in models] + [f"`{m}` s / image" for m in diffusion] \
        + [f"`{m}` calls / image" for m in diffusion] + (["CLIP s / image (whole run)"] if "ref-world-clip" in models else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in dict.fromkeys(r.task for r in results):
        row = [f"{task} ({TASKS[task][1]})"] + [f"{by_key[task, m].score:.1%}" for m in models]
        row += [f"{by_key[task, m].seconds_per_image:.2f}" for m in diffusion]
        row += [f"{by_key[task, m].unet_calls_per_image:.0f}" for m in diffusion]
        if "ref-world-clip" in models:
            row.append(f"{by_key[task, 'ref-world-clip'].seconds_per_image:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[RunResult]:
    parser = argparse.ArgumentParser(prog="python -m clip_benchmark_diffusion demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100, help="test images per task")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="the shipped SD-format and flow-matching diffusion models, and the reference CLIP")
    parser.add_argument("--data", default="data/world", help="where the world's test sets are written")
    parser.add_argument("--out", default="results/demo", help="where result JSONs, records and the table go")
    parser.add_argument("--seed", type=int, default=1, help="seed of the test sets")
    args, diffusion_flags = parser.parse_known_args(argv)
    if any(not flag.startswith("--diffusion_") for flag in diffusion_flags if flag.startswith("--")):
        parser.error(f"unknown arguments {diffusion_flags}; only --diffusion_* flags are passed on")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    for stale in glob.glob(os.path.join(args.out, "*.json")):
        os.remove(stale)  # results of an earlier demo; records (*.jsonl) are kept for resuming
    folders = ensure_test_sets(args.data, args.images, args.tasks, args.seed)
    results = []
    started = time.time()
    for task in args.tasks:
        # CLIP's per-image predictions feed the report's intervals and paired tests
        for short in args.models:
            model = MODELS[short]
            extra = ["--diffusion_predictions"] if model == CLIP else diffusion_flags
            print(f"== {task}: {model[0]} --pretrained {model[1]}", flush=True)
            results.append(run_one(task, folders[task], short, args.out, extra))
    text = table(results)
    print(f"\nReference world, {args.images} test images per task ({time.time() - started:.0f} s in all):\n")
    print(text)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(text + "\n")
    return results
