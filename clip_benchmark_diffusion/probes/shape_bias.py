"""Shape bias on cue-conflict images (Geirhos et al., ICLR 2019).

Each cue-conflict image shows the shape of one class in the texture of another. A decision
is a *shape* decision if the model picks the shape's class and a *texture* decision if it
picks the texture's class; everything else is ignored, so the bias measures which cue wins
when the model follows one of them at all:

    shape_bias = shape decisions / (shape decisions + texture decisions)

Images whose shape and texture classes agree carry no conflict and are excluded from every
number below (they are only counted). Pure functions on label lists: no model, no torch.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence


def _fraction(numerator: int, denominator: int) -> float:
    """NaN when undefined, as clip_benchmark does for metrics that do not apply (e.g. acc5)."""
    return numerator / denominator if denominator else float("nan")


def cue_decision(prediction: int, shape_label: int, texture_label: int) -> str:
    """Which cue one decision followed: "shape", "texture", "other", or "excluded" (no conflict)."""
    if shape_label == texture_label:
        return "excluded"
    if prediction == shape_label:
        return "shape"
    return "texture" if prediction == texture_label else "other"


def _cue_counts(predictions: Sequence[int], shapes: Sequence[int], textures: Sequence[int]) -> dict[str, Any]:
    """Shape/texture/other decisions over conflicting images only."""
    decisions = [cue_decision(*row) for row in zip(predictions, shapes, textures)]
    shape, texture, other = (decisions.count(kind) for kind in ("shape", "texture", "other"))
    images = shape + texture + other
    return {
        "shape_bias": _fraction(shape, shape + texture),
        "shape_accuracy": _fraction(shape, images),
        "texture_accuracy": _fraction(texture, images),
        "shape_decisions": shape,
        "texture_decisions": texture,
        "other_decisions": other,
        "images": images,
    }


def shape_bias_metrics(predictions: Sequence[int], shape_labels: Sequence[int], texture_labels: Sequence[int],
                       classes: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Overall and per-shape-class shape bias, shape/texture accuracy and decision counts.

    `predictions`, `shape_labels` and `texture_labels` are class indices per image.
    `classes` names the indices in `per_class` (default: the indices themselves).
    Returns `{"shape_bias", "shape_accuracy", "texture_accuracy", "shape_decisions",
    "texture_decisions", "other_decisions", "conflict_images", "excluded_images",
    "per_class": {class name: {same keys, "images"}}}`; undefined fractions are NaN.
    """
    if not len(predictions) == len(shape_labels) == len(texture_labels):
        raise ValueError(f"lengths differ: {len(predictions)} predictions, {len(shape_labels)} shape labels, "
                         f"{len(texture_labels)} texture labels")
    conflict = [(int(p), int(s), int(t)) for p, s, t in zip(predictions, shape_labels, texture_labels) if s != t]
    metrics = _cue_counts(*zip(*conflict)) if conflict else _cue_counts([], [], [])
    metrics["conflict_images"] = metrics.pop("images")
    metrics["excluded_images"] = len(predictions) - len(conflict)

    def name(index: int) -> str:
        return str(classes[index]) if classes is not None else str(index)

    per_class = {}
    for shape_class in sorted({s for _, s, _ in conflict}):
        rows = [row for row in conflict if row[1] == shape_class]
        per_class[name(shape_class)] = _cue_counts(*zip(*rows))
    metrics["per_class"] = per_class
    return metrics
