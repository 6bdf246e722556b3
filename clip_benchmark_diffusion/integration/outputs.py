"""File names of a run (result JSON, per-image record, predictions) and what is written beside clip_benchmark's.

Public so the probes name their files the same way as `clip_benchmark eval`.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional

RECORD_SUFFIX = ".diffusion.jsonl"
PREDICTIONS_SUFFIX = ".predictions.jsonl"


def file_safe_pretrained(pretrained: str) -> str:
    """`--pretrained` as clip_benchmark puts it into output names, but never with a `/`
    (clip_benchmark only slugs names of existing files and crashes at the very end)."""
    slug = os.path.basename(pretrained) if os.path.isfile(pretrained) else pretrained
    return slug.strip("/").replace("/", "_")


def dataset_name(args: argparse.Namespace) -> str:
    """The dataset name as clip_benchmark uses it for tasks and output names (no `wds/`)."""
    return args.dataset.replace("wds/", "", 1) if args.dataset.startswith("wds/") else args.dataset


def wds_root(args: argparse.Namespace) -> Optional[str]:
    """A local `wds/` dataset's folder, `--dataset_root` filled in as clip_benchmark fills it; None
    for other datasets."""
    if not str(getattr(args, "dataset", "")).startswith("wds/"):
        return None
    name = dataset_name(args)
    return args.dataset_root.format(dataset=name, dataset_cleaned=name.replace("/", "-"))


def task_of(args: argparse.Namespace) -> str:
    """The task clip_benchmark runs (`--task auto`: the dataset's default task)."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    return get_dataset_default_task(dataset_name(args)) if args.task == "auto" else args.task


def output_path(args: argparse.Namespace, task: str) -> str:
    """clip_benchmark's own output name, with a file-safe `{pretrained}`."""
    slug = file_safe_pretrained(args.pretrained)
    return args.output.format(model=args.model, pretrained=slug, pretrained_full_path=slug,
                              task=task, dataset=dataset_name(args).replace("/", "_"), language=args.language)


def default_record_path(output: str) -> str:
    """The per-image record beside the result JSON: `X.json` -> `X.diffusion.jsonl`."""
    return os.path.splitext(output)[0] + RECORD_SUFFIX


def predictions_path(args: argparse.Namespace) -> Optional[str]:
    """`X.predictions.jsonl` beside a classification run's result `X.json` (any model): the report's
    confidence intervals and paired tests need per-image correctness, which the result JSON lacks."""
    task = task_of(args)
    return os.path.abspath(os.path.splitext(output_path(args, task))[0] + PREDICTIONS_SUFFIX) \
        if task == "zeroshot_classification" else None


def write_predictions(path: str, predictions: list[int], labels: list[int]) -> None:
    """`X.predictions.jsonl`: per-image correctness, which the report's intervals and paired tests need
    and clip_benchmark's result JSON lacks."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f'{{"index": {i}, "prediction": {p}, "label": {t}}}\n'
                          for i, (p, t) in enumerate(zip(predictions, labels)))


def add_protocol(output: str, protocol: dict, settings: Any, record_path: str) -> None:
    """The result JSON says how it was computed: a top-level `protocol` label (a column of the
    leaderboard and of `clip_benchmark build`) and a `diffusion` section (protocol, settings, record)."""
    with open(output, encoding="utf-8") as handle:
        dump = json.load(handle)
    dump["protocol"] = protocol["label"]
    dump["diffusion"] = {"protocol": protocol, "settings": settings.to_dict(), "record": os.path.basename(record_path)}
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(dump, handle)
