"""Corruption robustness of any clip_benchmark model (CLIP or diffusion): ImageNet-C-style sets.

Three folder layouts are read, so the same command runs on the reference world's world-C and on a
user's copy of the public benchmarks:

* ``world``: ``<root>/<corruption>/<severity>/`` clip_benchmark ``wds/`` folders (``world/corruptions.py``);
* ``imagenet-c``: ``<root>/<corruption>/<severity>/<wnid>/<image>`` (Hendrycks & Dietterich's release);
  labels are ImageNet indices (a subset of the 1000 class folders is fine), class names and templates
  are clip_benchmark's ``imagenet1k`` ones;
* ``cifar10-c``: ``<root>/<corruption>.npy`` (N x 32 x 32 x 3 uint8, severities 1-5 stacked in order)
  and ``<root>/labels.npy``; clip_benchmark's ``cifar10`` class names and templates.

Each set is scored by clip_benchmark's own ``zero_shot_classifier`` + ``run_classification``, as
``clip_benchmark eval`` does. The summary follows ImageNet-C (Hendrycks & Dietterich, 2019):
corruption error CE_c = sum_s E_{c,s} / sum_s E^baseline_{c,s}, mCE = mean_c CE_c, and the relative
mCE uses (E_{c,s} - E_clean) in both sums.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

LAYOUTS = ("auto", "world", "imagenet-c", "cifar10-c")
TASK = "corruption_robustness"
CLEAN = "clean"
#: torchvision's CIFAR10.classes (read there from the dataset's own meta file, which CIFAR-10-C lacks)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class CorruptionSet:
    """One (corruption, severity) set; `load(transform)` gives a dataset with `.classes` and `.templates`."""

    corruption: str
    severity: int
    load: Callable[[Callable], Dataset]


class _ArrayDataset(Dataset):
    """uint8 images (N x H x W x 3) and labels, e.g. one severity of a CIFAR-10-C file."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable, classes: list[str],
                 templates: list[str]) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.classes, self.templates = classes, templates

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(np.asarray(self.images[index]))), int(self.labels[index])


def _clip_benchmark_names(dataset: str) -> tuple[list[str], list[str]]:
    """clip_benchmark's English class names (CIFAR-10: torchvision's) and zero-shot templates of a dataset."""
    import clip_benchmark.datasets.builder as builder

    folder = os.path.dirname(builder.__file__)
    with open(os.path.join(folder, "en_classnames.json"), encoding="utf-8") as handle:
        classes = json.load(handle).get(dataset, CIFAR10_CLASSES if dataset == "cifar10" else None)
    with open(os.path.join(folder, "en_zeroshot_classification_templates.json"), encoding="utf-8") as handle:
        templates = json.load(handle)[dataset]
    return classes, templates


def _wds_set(folder: str) -> Callable[[Callable], Dataset]:
    def load(transform: Callable) -> Dataset:
        from clip_benchmark.datasets.builder import build_dataset

        return build_dataset(f"wds/{os.path.basename(os.path.normpath(folder))}", root=folder, transform=transform,
                             split="test")
    return load


def _imagenet_folder(folder: str) -> Callable[[Callable], Dataset]:
    def load(transform: Callable) -> Dataset:
        from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(folder, transform=transform)
        index = {wnid: i for i, wnid in enumerate(all_imagenet_wordnet_ids)}
        unknown = sorted(set(dataset.classes) - set(index))
        if unknown:
            raise ValueError(f"{folder}: class folders that are not ImageNet wnids: {unknown[:5]}")
        to_imagenet = [index[wnid] for wnid in dataset.classes]
        dataset.target_transform = to_imagenet.__getitem__
        dataset.classes, dataset.templates = _clip_benchmark_names("imagenet1k")
        return dataset
    return load


def _cifar_severity(path: str, labels_path: str, severity: int) -> Callable[[Callable], Dataset]:
    def load(transform: Callable) -> Dataset:
        images, labels = np.load(path, mmap_mode="r"), np.load(labels_path)
        if len(images) != len(labels) or len(images) % 5:
            raise ValueError(f"{path}: expected 5 severities of equal size and one label per image, got "
                             f"{len(images)} images and {len(labels)} labels")
        size = len(images) // 5
        part = slice((severity - 1) * size, severity * size)
        classes, templates = _clip_benchmark_names("cifar10")
        return _ArrayDataset(images[part], labels[part], transform, classes, templates)
    return load


def detect_layout(root: str) -> str:
    """`cifar10-c` if there is a labels.npy, `world` if severity folders are wds folders, else `imagenet-c`."""
    if os.path.isfile(os.path.join(root, "labels.npy")):
        return "cifar10-c"
    for corruption in sorted(os.listdir(root)):
        for severity in ("1", "2", "3", "4", "5"):
            if os.path.isfile(os.path.join(root, corruption, severity, "dataset_type.txt")):
                return "world"
    return "imagenet-c"


def find_corruption_sets(root: str, layout: str = "auto") -> list[CorruptionSet]:
    """Every (corruption, severity) set under `root`, sorted; raises if there is none."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no corruption folder at {root}")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    sets = []
    if layout == "cifar10-c":
        labels = os.path.join(root, "labels.npy")
        for name in sorted(os.listdir(root)):
            if name.endswith(".npy") and name != "labels.npy":
                path = os.path.join(root, name)
                sets += [CorruptionSet(name[:-4], s, _cifar_severity(path, labels, s)) for s in range(1, 6)]
    else:
        make = _wds_set if layout == "world" else _imagenet_folder
        for corruption in sorted(os.listdir(root)):
            folder = os.path.join(root, corruption)
            severities = sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if os.path.isdir(folder) else []
            sets += [CorruptionSet(corruption, s, make(os.path.join(folder, str(s)))) for s in severities]
    if not sets:
        raise FileNotFoundError(f"{root}: no corruption/severity sets in the {layout} layout")
    return sets


def clean_set(root: str, layout: str) -> CorruptionSet:
    """The uncorrupted images (severity 0): a wds folder (world) or an ImageNet class folder tree."""
    if layout == "cifar10-c":
        raise ValueError("CIFAR-10-C has no clean split in its folder; leave --clean-root out")
    return CorruptionSet(CLEAN, 0, _wds_set(root) if layout == "world" else _imagenet_folder(root))


# ------------------------------------------------------------------------------------------ metrics
def corruption_errors(errors: dict[tuple[str, int], float], baseline: dict[tuple[str, int], float],
                      clean: Optional[float] = None, baseline_clean: Optional[float] = None) -> dict[str, Any]:
    """ImageNet-C's summary of top-1 error rates keyed by (corruption, severity):
    CE per corruption, mCE, and (with both clean errors) relative CE and relative mCE."""
    corruptions = sorted({c for c, _ in errors})
    ce, relative = {}, {}
    for c in corruptions:
        severities = [s for cc, s in errors if cc == c]
        if any((c, s) not in baseline for s in severities):
            raise ValueError(f"the baseline lacks some severities of {c}")
        base = sum(baseline[(c, s)] for s in severities)
        ce[c] = sum(errors[(c, s)] for s in severities) / base if base > 0 else math.nan
        if clean is not None and baseline_clean is not None:
            base_gap = sum(baseline[(c, s)] - baseline_clean for s in severities)
            gap = sum(errors[(c, s)] - clean for s in severities)
            relative[c] = gap / base_gap if base_gap > 0 else math.nan
    summary: dict[str, Any] = {"CE": ce, "mCE": float(np.mean(list(ce.values())))}
    if relative:
        summary.update(relative_CE=relative, relative_mCE=float(np.mean(list(relative.values()))))
    return summary


def summarise(correct: dict[tuple[str, int], np.ndarray]) -> dict[str, Any]:
    """Accuracy per (corruption, severity), per severity (mean over corruptions) and overall."""
    corrupted = {k: v for k, v in correct.items() if k[0] != CLEAN}
    accuracy = {f"{c}/{s}": float(v.mean()) for (c, s), v in sorted(corrupted.items())}
    severities = sorted({s for _, s in corrupted})
    per_severity = {str(s): float(np.mean([v.mean() for (_, ss), v in corrupted.items() if ss == s]))
                    for s in severities}
    metrics: dict[str, Any] = {
        "mean_acc": float(np.mean([v.mean() for v in corrupted.values()])), "acc_per_severity": per_severity,
        "acc": accuracy, "images": int(sum(len(v) for v in corrupted.values())),
        "images_per_set": int(min(len(v) for v in corrupted.values()))}
    if (CLEAN, 0) in correct:
        metrics.update(clean_acc=float(correct[(CLEAN, 0)].mean()), clean_images=len(correct[(CLEAN, 0)]))
    return metrics


def errors_of(metrics: dict[str, Any]) -> dict[tuple[str, int], float]:
    """(corruption, severity) -> top-1 error, from a result's metrics."""
    out = {}
    for key, acc in metrics["acc"].items():
        corruption, _, severity = key.rpartition("/")
        out[(corruption, int(severity))] = 1.0 - acc
    return out


# ------------------------------------------------------------------------------------------ running
def _point_records(model: Any, path: str, info: dict) -> None:
    """Send a diffusion model's per-image record of the next set to `path` (one file per set)."""
    model.record_path = path
    model.record_header = {**model.record_header, "run": info}


def run_model(model_name: str, pretrained: str, sets: Sequence[CorruptionSet], out: str, dataset: str,
              model_type: str = "open_clip", device: Optional[str] = None, batch_size: int = 32,
              num_workers: int = 0, amp: bool = True, seed: int = 0, cache_dir: Optional[str] = None,
              diffusion_options: Optional[argparse.Namespace] = None) -> dict[tuple[str, int], np.ndarray]:
    """Per-image correctness of one model on every set; diffusion models write one record per set
    (`<out>/<model>_<pretrained>_<corruption>_<severity>.diffusion.jsonl`, resumable)."""
    from clip_benchmark.metrics import zeroshot_classification
    from clip_benchmark.models import load_clip

    from ..integration.flags import default_options
    from ..integration.outputs import file_safe_pretrained
    from ..integration.run import diffusion_run, effective_model_type, is_diffusion_model
    from ..registration import register

    register()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    stem = f"{model_name}_{file_safe_pretrained(pretrained)}"
    diffusion = is_diffusion_model(model_type, model_name)
    context = contextlib.nullcontext()
    if diffusion:
        options = diffusion_options or default_options()
        info = {"dataset": dataset, "pretrained": pretrained, "task": "zeroshot_classification", "probe": TASK,
                "model_name": model_name}
        context = diffusion_run(options, seed, os.path.join(out, stem + ".diffusion.jsonl"), info)
    correct = {}
    with context:
        model, transform, tokenizer = load_clip(model_type=effective_model_type(model_type, model_name),
                                                model_name=model_name, pretrained=pretrained,
                                                cache_dir=cache_dir, device=device)
        model.eval()
        for item in sets:
            data = item.load(transform)
            if diffusion:
                name = f"{stem}_{item.corruption}_{item.severity}"
                _point_records(model, os.path.join(out, name + ".diffusion.jsonl"),
                               {**info, "dataset": f"{dataset}/{item.corruption}/{item.severity}",
                                "corruption": item.corruption, "severity": item.severity})
            classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, data.classes, data.templates,
                                                                      device, amp=amp)
            loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            logits, target = zeroshot_classification.run_classification(model, classifier, loader, device, amp=amp)
            correct[(item.corruption, item.severity)] = (logits.argmax(dim=1) == target).numpy()
    return correct


def severity_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: accuracy per severity (mean over corruptions, 95% interval over its images) for
    each model, then mCE rows."""
    from ..report.stats import accuracy_with_interval as _with_interval

    names = [f"{r['model']} {r['pretrained']}" for r in results]
    lines = ["| severity | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    per_set = results[0]["metrics"]["images_per_set"]
    corruptions = len({key.rpartition("/")[0] for key in results[0]["metrics"]["acc"]})
    if all("clean_acc" in r["metrics"] for r in results):
        lines.append("| clean | " + " | ".join(_with_interval(r["metrics"]["clean_acc"], r["metrics"]["clean_images"])
                                            for r in results) + " |")
    for severity in results[0]["metrics"]["acc_per_severity"]:
        cells = [_with_interval(r["metrics"]["acc_per_severity"][severity], per_set * corruptions) for r in results]
        lines.append(f"| {severity} | " + " | ".join(cells) + " |")
    lines.append("| mean over corruptions and severities | " +
                 " | ".join(_with_interval(r["metrics"]["mean_acc"], r["metrics"]["images"]) for r in results) + " |")
    for key in ("mCE", "relative_mCE"):
        if all(key in r["metrics"] for r in results):
            lines.append(f"| {key} (baseline {results[0]['metrics']['baseline']}) | " +
                         " | ".join(f"{100 * r['metrics'][key]:.1f}" for r in results) + " |")
    return "\n".join(lines)


def run_robustness(models: Sequence[tuple[str, str]], root: str, out: str, layout: str = "auto",
                   clean_root: Optional[str] = None, dataset: Optional[str] = None, **options: Any
                   ) -> list[dict[str, Any]]:
    """Evaluate each (model, pretrained) on every set under `root`; the first model is the mCE
    baseline. Writes one clip_benchmark-style result JSON and a predictions file per model."""
    layout = detect_layout(root) if layout == "auto" else layout
    sets = find_corruption_sets(root, layout)
    if clean_root:
        sets = [clean_set(clean_root, layout)] + sets
    dataset = dataset or f"{os.path.basename(os.path.normpath(root))}_c"
    os.makedirs(out, exist_ok=True)
    results = []
    for model_name, pretrained in models:
        started = time.perf_counter()
        correct = run_model(model_name, pretrained, sets, out, dataset, **options)
        seconds = time.perf_counter() - started
        results.append({"dataset": dataset, "model": model_name, "pretrained": pretrained, "task": TASK,
                        "language": "en", "metrics": {**summarise(correct), "seconds": round(seconds, 1)},
                        "_correct": correct})
    base = results[0]["metrics"]
    for result in results:
        metrics = result["metrics"]
        metrics.update(corruption_errors(errors_of(metrics), errors_of(base),
                                         None if "clean_acc" not in metrics else 1 - metrics["clean_acc"],
                                         None if "clean_acc" not in base else 1 - base["clean_acc"]))
        metrics["baseline"] = f"{results[0]['model']} {results[0]['pretrained']}"
        _write_result(result, out)
    return results


def _write_result(result: dict[str, Any], out: str) -> None:
    from ..integration.outputs import file_safe_pretrained

    correct = result.pop("_correct")
    stem = os.path.join(out, f"{result['dataset']}_{result['model']}_{file_safe_pretrained(result['pretrained'])}")
    with open(stem + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    with open(stem + ".predictions.jsonl", "w", encoding="utf-8") as handle:
        for (corruption, severity), values in sorted(correct.items()):
            for index, value in enumerate(values.tolist()):
                handle.write(json.dumps({"corruption": corruption, "severity": severity, "index": index,
                                         "correct": bool(value)}) + "\n")
