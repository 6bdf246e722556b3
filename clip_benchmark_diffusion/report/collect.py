"""Reading a results folder: clip_benchmark result JSONs and the plugin's per-image records.

Only plain JSON parsing here (no torch, no clip_benchmark import), so a report of a finished
benchmark builds in seconds on any machine. A result JSON is any `*.json` with clip_benchmark's
keys (`dataset`, `model`, `pretrained`, `task`, `metrics`); other JSON files are skipped. A
record file `X.diffusion.jsonl` belongs to the result `X.json` beside it (the CLI's naming).
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Optional

RESULT_KEYS = ("dataset", "model", "pretrained", "task", "metrics")
RECORD_SUFFIX = ".diffusion.jsonl"
#: the metric a table cell shows, by task: the first one present wins
MAIN_METRICS: dict[str, tuple[str, ...]] = {
    "zeroshot_classification": ("acc1", "mean_average_precision"),
    "image_caption_selection": ("text_acc", "acc"),
    "shape_bias": ("shape_bias",),
    "zeroshot_retrieval": ("image_retrieval_recall@5", "text_retrieval_recall@5"),
    "linear_probe": ("lp_acc1",),
    "corruption_robustness": ("mean_acc",),
}
PREDICTIONS_SUFFIX = ".predictions.jsonl"
#: clip_benchmark caption-selection datasets with several images per instance (others have one, so
#: their image_acc is 1 by construction); results that carry `images_per_instance` say it themselves
MULTI_IMAGE_DATASETS = ("winoground",)


@dataclass(frozen=True)
class Result:
    """One clip_benchmark result JSON."""

    path: str
    data: dict

    @property
    def dataset(self) -> str:
        return str(self.data["dataset"])

    @property
    def task(self) -> str:
        return str(self.data["task"])

    @property
    def metrics(self) -> dict:
        return self.data["metrics"]

    @property
    def model_fullname(self) -> str:
        """The model column of `clip_benchmark build`: model + ' ' + pretrained."""
        return f"{self.data['model']} {self.data['pretrained']}"

    @property
    def protocol(self) -> Optional[str]:
        """The `--diffusion_protocol` label a diffusion result was computed under (None: CLIP, or a
        result written before protocols were recorded)."""
        value = self.data.get("protocol")
        return str(value) if value else None

    @property
    def label(self) -> str:
        """The model as tables and plots show it: with its protocol, so results computed differently
        never share a column, a bar or an unmarked comparison."""
        return self.model_fullname if self.protocol is None else f"{self.model_fullname} · {self.protocol}"

    @property
    def main_metric(self) -> tuple[str, Optional[float]]:
        """(name, value) of the number that represents this result in tables and plots."""
        names = MAIN_METRICS.get(self.task, ()) + tuple(sorted(self.metrics))
        for name in names:
            value = self.metrics.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return name, float(value)
        return (names[0] if names else "metric"), None


@dataclass(frozen=True)
class RunCost:
    """What a diffusion run spent, from its per-image records."""

    path: str
    model_fullname: str
    dataset: str
    images: int
    mean_calls: float
    min_calls: int
    max_calls: int
    seconds_per_image: Optional[float]
    accuracy: Optional[float]
    settings: dict
    probe: Optional[str] = None  # set by `probes` runs (e.g. "shape_bias")
    protocol: Optional[str] = None  # the record header's protocol label, if it has one

    @property
    def settings_label(self) -> str:
        strategy, draws = self.settings.get("strategy", "?"), self.settings.get("draws", "?")
        if strategy == "schedule" and self.settings.get("schedule_keep"):
            stages = ",".join(f"{k}@{d}" for k, d in zip(self.settings["schedule_keep"],
                                                         self.settings.get("schedule_draws", ())))
            return f"schedule {stages}"
        return f"{strategy}, {draws} draws"


def _is_result(data: Any) -> bool:
    return isinstance(data, dict) and all(k in data for k in RESULT_KEYS) and isinstance(data["metrics"], dict)


def _files(folder: str, suffix: str) -> list[str]:
    found = []
    for directory, _, names in os.walk(folder):
        found.extend(os.path.join(directory, n) for n in names if n.endswith(suffix))
    return sorted(found)


def read_results(folder: str) -> list[Result]:
    """Every clip_benchmark result JSON under `folder` (recursively), sorted by path."""
    results = []
    for path in _files(folder, ".json"):
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            continue
        if _is_result(data):
            results.append(Result(path, data))
    return results


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _records_accuracy(images: list[dict], summary: Optional[dict], task: str) -> Optional[float]:
    """Top-1 accuracy from the records, when they hold the true labels (classification)."""
    labels = (summary or {}).get("labels")
    if task != "zeroshot_classification" or not labels or len(labels) != len(images):
        return None
    return sum(image.get("prediction") == label for image, label in zip(images, labels)) / len(images)


def _seconds_per_image(images: list[dict], summary: Optional[dict]) -> Optional[float]:
    """Wall time per image, if the records carry it (per image `seconds`, or the summary's)."""
    if images and all(isinstance(image.get("seconds"), (int, float)) for image in images):
        return sum(image["seconds"] for image in images) / len(images)
    seconds = (summary or {}).get("seconds")
    return seconds / len(images) if isinstance(seconds, (int, float)) and images else None


def read_cost(path: str) -> Optional[RunCost]:
    """The cost summary of one record file (None if it has no header or no image)."""
    lines = _read_jsonl(path)
    header = next((line for line in lines if line.get("type") == "header"), None)
    images = [line for line in lines if line.get("type") == "image"]
    summary = next((line for line in reversed(lines) if line.get("type") == "summary"), None)
    if header is None or not images:
        return None
    run = header.get("run") or {}
    calls = [int(image.get("calls", 0)) for image in images]
    return RunCost(path=path, model_fullname=f"{run.get('model_name', 'sd-diffusion')} {run.get('pretrained', '?')}",
                   dataset=str(run.get("dataset", os.path.basename(path)[:-len(RECORD_SUFFIX)])),
                   images=len(images), mean_calls=statistics.fmean(calls), min_calls=min(calls), max_calls=max(calls),
                   seconds_per_image=_seconds_per_image(images, summary),
                   accuracy=_records_accuracy(images, summary, str(run.get("task", ""))),
                   settings=header.get("settings") or {}, probe=run.get("probe"),
                   protocol=(header.get("protocol") or {}).get("label"))


def read_costs(folder: str) -> list[RunCost]:
    """Cost summaries of every `*.diffusion.jsonl` under `folder`, sorted by path."""
    return [cost for cost in map(read_cost, _files(folder, RECORD_SUFFIX)) if cost is not None]


def paired_result(cost: RunCost, results: list[Result]) -> Optional[Result]:
    """The result JSON a record file was written beside (`X.diffusion.jsonl` <-> `X.json`)."""
    wanted = cost.path[:-len(RECORD_SUFFIX)] + ".json"
    return next((r for r in results if os.path.abspath(r.path) == os.path.abspath(wanted)), None)


def cost_accuracy(cost: RunCost, results: list[Result]) -> Optional[float]:
    """Accuracy of a diffusion run: its result's main metric, else what the records say;
    None for shape-bias runs (their labels are shapes, and accuracy is not what they measure)."""
    result = paired_result(cost, results)
    if cost.probe == "shape_bias" or (result is not None and result.task == "shape_bias"):
        return None
    value = result.main_metric[1] if result is not None else None
    return value if value is not None and not math.isnan(value) else cost.accuracy


def images_per_instance(result: Result) -> int:
    """Images per caption-selection instance: from the result (this plugin adds it), else by dataset."""
    recorded = result.metrics.get("images_per_instance")
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    return 2 if result.dataset.replace("wds/", "") in MULTI_IMAGE_DATASETS else 1


def correctness(result: Result) -> Optional[list[bool]]:
    """Per-image correctness behind a result's main accuracy, in image order, when a file beside
    it has it: `X.predictions.jsonl` (written by diffusion classification runs, by other models' runs
    given `--diffusion_predictions`, and by the robustness probe) or the diffusion record `X.diffusion.jsonl`. None otherwise, and None
    when the file disagrees with the result's own accuracy (it then belongs to another run)."""
    correct = _correctness_from_files(result)
    value = result.main_metric[1]
    if correct and value is not None and not math.isnan(value) and abs(sum(correct) / len(correct) - value) > 1e-6:
        return None
    return correct


def _correctness_from_files(result: Result) -> Optional[list[bool]]:
    stem = os.path.splitext(result.path)[0]
    if result.task == "shape_bias":
        return None
    if os.path.isfile(stem + PREDICTIONS_SUFFIX):
        lines = _read_jsonl(stem + PREDICTIONS_SUFFIX)
        if lines and all("correct" in line for line in lines):  # robustness: corrupted images only
            return [bool(line["correct"]) for line in lines if line.get("corruption") != "clean"]
        if lines and all("prediction" in line and "label" in line for line in lines):
            return [line["prediction"] == line["label"] for line in lines]
    if os.path.isfile(stem + RECORD_SUFFIX):
        lines = _read_jsonl(stem + RECORD_SUFFIX)
        images = [line for line in lines if line.get("type") == "image"]
        summary = next((line for line in reversed(lines) if line.get("type") == "summary"), None)
        if result.task == "image_caption_selection" and images_per_instance(result) == 1:
            return [line.get("prediction") == 0 for line in images]  # the true caption is candidate 0
        labels = (summary or {}).get("labels")
        if result.task == "zeroshot_classification" and labels and len(labels) == len(images):
            return [line.get("prediction") == label for line, label in zip(images, labels)]
    return None


def successes_and_trials(result: Result) -> Optional[tuple[int, int]]:
    """(k, n) behind the main metric, for its confidence interval: from per-image correctness, from
    a caption-selection result's instance count, or from shape-bias decision counts."""
    correct = correctness(result)
    if correct:
        return sum(correct), len(correct)
    name, value = result.main_metric
    metrics = result.metrics
    if result.task == "shape_bias" and isinstance(metrics.get("shape_decisions"), int):
        return metrics["shape_decisions"], metrics["shape_decisions"] + metrics.get("texture_decisions", 0)
    instances = metrics.get("instances")
    if isinstance(instances, int) and instances > 0 and value is not None and not math.isnan(value):
        return round(value * instances), instances
    return None
