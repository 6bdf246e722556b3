"""Shape bias of any clip_benchmark model, CLIP or diffusion, on cue-conflict images.

The model is loaded by clip_benchmark's own `load_clip` and scored by its own
`zero_shot_classifier` + `run_classification`, exactly as `clip_benchmark eval` does, so CLIP
and diffusion models are compared by the same code; only the metric (shape bias) is ours.
The result JSON has clip_benchmark's layout, so `clip_benchmark build` and our report read it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from .cue_conflict import CueConflictDataset, load_cue_conflict
from .shape_bias import cue_decision, shape_bias_metrics

TASK = "shape_bias"
#: clip_benchmark's default `--output` template
DEFAULT_OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}.json"


def predict(model: Any, tokenizer: Any, dataset: CueConflictDataset, device: str, amp: bool = True,
            batch_size: int = 32, num_workers: int = 0) -> list[int]:
    """Zero-shot class index per image, through clip_benchmark's zero-shot functions."""
    from clip_benchmark.metrics import zeroshot_classification  # looked up late: registration patches it

    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates,
                                                              device, amp=amp)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    logits, _ = zeroshot_classification.run_classification(model, classifier, loader, device, amp=amp)
    return logits.argmax(dim=1).tolist()


def output_path(template: str, dataset: str, model: str, pretrained: str, language: str = "en") -> str:
    """clip_benchmark's `--output` template, with a file-safe `{pretrained}`."""
    from ..integration.outputs import file_safe_pretrained

    slug = file_safe_pretrained(pretrained)
    return template.format(dataset=dataset, model=model, pretrained=slug, pretrained_full_path=slug, task=TASK,
                           language=language)


def _write_predictions(path: str, dataset: CueConflictDataset, predictions: Sequence[int]) -> None:
    classes = dataset.classes
    with open(path, "w", encoding="utf-8") as handle:
        for index, (name, prediction, shape, texture) in enumerate(
                zip(dataset.names, predictions, dataset.targets, dataset.texture_labels)):
            handle.write(json.dumps({
                "index": index, "image": name, "shape": classes[shape], "texture": classes[texture],
                "prediction": classes[prediction], "decision": cue_decision(prediction, shape, texture)}) + "\n")


def run_shape_bias(model: str, pretrained: str, dataset_root: str, layout: str = "geirhos",
                   output: str = DEFAULT_OUTPUT, model_type: str = "open_clip", device: Optional[str] = None,
                   batch_size: int = 32, num_workers: int = 0, amp: bool = True,
                   templates: Optional[Sequence[str]] = None, seed: int = 0, cache_dir: Optional[str] = None,
                   diffusion_options: Optional[argparse.Namespace] = None, language: str = "en") -> dict[str, Any]:
    """Evaluate one model; write the result JSON and `<output stem>.predictions.jsonl`
    (plus `<output stem>.diffusion.jsonl` for diffusion models). Returns the result dict.

    `diffusion_options` are the parsed `--diffusion_*` flags (default: their defaults).
    """
    from clip_benchmark.models import load_clip

    from ..integration.flags import default_options
    from ..integration.run import diffusion_run, effective_model_type, is_diffusion_model
    from ..registration import register

    register()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dataset_name = f"cue_conflict_{layout}"
    result_path = output_path(output, dataset_name, model, pretrained, language)
    stem = os.path.splitext(result_path)[0]
    os.makedirs(os.path.dirname(os.path.abspath(result_path)), exist_ok=True)
    torch.manual_seed(seed)
    diffusion = is_diffusion_model(model_type, model)
    context = contextlib.nullcontext()
    if diffusion:
        options = diffusion_options or default_options()
        # "task" is how the diffusion model is driven (zero-shot classification); "probe" what it is for
        info = {"dataset": dataset_name, "pretrained": pretrained, "task": "zeroshot_classification", "probe": TASK,
                "result_json": result_path, "model_name": model, "language": language}
        context = diffusion_run(options, seed, options.diffusion_records or stem + ".diffusion.jsonl", info)
    with context:
        started = time.perf_counter()
        clip_model, transform, tokenizer = load_clip(model_type=effective_model_type(model_type, model),
                                                     model_name=model, pretrained=pretrained,
                                                     cache_dir=cache_dir, device=device)
        clip_model.eval()
        dataset = load_cue_conflict(layout, dataset_root, transform, templates)
        predictions = predict(clip_model, tokenizer, dataset, device, amp, batch_size, num_workers)
        elapsed = time.perf_counter() - started
    metrics = shape_bias_metrics(predictions, dataset.targets, dataset.texture_labels, dataset.classes)
    result = {"dataset": dataset_name, "model": model, "pretrained": pretrained, "task": TASK, "metrics": metrics,
              "language": language}
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    _write_predictions(stem + ".predictions.jsonl", dataset, predictions)
    print(f"{model} {pretrained}: shape bias {metrics['shape_bias']:.3f} on {metrics['conflict_images']} "
          f"cue-conflict images ({elapsed:.1f} s) -> {result_path}")
    return result
