"""The report's figures as PNG bytes (matplotlib, Agg: no display needed).

Each function returns None when the results hold nothing to draw, so a report of CLIP-only
or classification-only results simply has fewer figures.
"""
from __future__ import annotations

import io
import math
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib import ticker  # noqa: E402

from .collect import Result, RunCost, cost_accuracy  # noqa: E402
from .tables import interval  # noqa: E402

DPI = 100
MARKERS = "os^Dv<>pPX*h"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _value(result: Result) -> float:
    value = result.main_metric[1]
    return float("nan") if value is None else value


def _grouped_bars(results: Sequence[Result], title: str, ylabel: str, chance: Optional[float] = None) -> bytes:
    """Datasets along x, one bar per model; missing (model, dataset) pairs leave a gap."""
    datasets = sorted({r.dataset for r in results})
    models = sorted({r.label for r in results})  # with the protocol: different protocols never share a bar
    values = {(r.dataset, r.label): _value(r) for r in results}
    bounds = {(r.dataset, r.label): interval(r) for r in results}
    width = 0.8 / len(models)
    figure, axis = plt.subplots(figsize=(min(14.0, max(6.0, 0.45 * len(datasets) * len(models) + 2)), 4.2))
    colours = plt.get_cmap("tab10")
    for m, model in enumerate(models):
        heights = [values.get((d, model), float("nan")) for d in datasets]
        positions = [d + (m - (len(models) - 1) / 2) * width for d in range(len(datasets))]
        axis.bar(positions, heights, width=width, label=model, color=colours(m % 10))
        low = [h - b[0] if (b := bounds.get((d, model))) else 0.0 for d, h in zip(datasets, heights)]
        high = [b[1] - h if (b := bounds.get((d, model))) else 0.0 for d, h in zip(datasets, heights)]
        axis.errorbar(positions, heights, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    if chance is not None:
        axis.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance ({chance:g})")
    axis.set_xticks(range(len(datasets)))
    crowded = len(datasets) > 4
    axis.set_xticklabels(datasets, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axis.set_ylim(0, 1)
    axis.set_ylabel(ylabel)
    axis.set_title(f"{title} (bars: 95% intervals)" if any(bounds.values()) else title)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def accuracy_plot(results: Sequence[Result]) -> Optional[bytes]:
    """Grouped bars of each dataset's main accuracy (classification, retrieval, probes)."""
    chosen = [r for r in results if r.task not in ("shape_bias", "image_caption_selection")]
    return _grouped_bars(chosen, "Accuracy per dataset", "accuracy (main metric)") if chosen else None


def binding_plot(results: Sequence[Result]) -> Optional[bytes]:
    """Caption-selection (binding) accuracy per task against the two-caption chance level."""
    chosen = [r for r in results if r.task == "image_caption_selection"]
    return _grouped_bars(chosen, "Attribute binding (caption selection)", "text accuracy", 0.5) if chosen else None


def shape_bias_plot(results: Sequence[Result]) -> Optional[bytes]:
    """Geirhos-style: per shape class, the fraction of shape decisions (bottom axis) and of
    texture decisions (top axis, = 1 - shape), one marker per model; a vertical line marks
    each model's overall shape bias."""
    chosen = [r for r in results if r.task == "shape_bias"]
    if not chosen:
        return None
    classes = sorted({c for r in chosen for c in r.metrics.get("per_class", {})})
    figure, axis = plt.subplots(figsize=(6.5, 1.2 + 0.32 * max(len(classes), 4)))
    colours = plt.get_cmap("tab10")
    for m, result in enumerate(chosen):
        colour, per_class = colours(m % 10), result.metrics.get("per_class", {})
        points = [(per_class[c].get("shape_bias"), i) for i, c in enumerate(classes) if c in per_class]
        points = [(x, y) for x, y in points if x is not None and not math.isnan(x)]
        label = f"{result.label} ({result.dataset})"
        if points:
            axis.scatter(*zip(*points), marker=MARKERS[m % len(MARKERS)], color=colour, s=40, label=label, zorder=3)
        overall = result.metrics.get("shape_bias")
        if overall is not None and not math.isnan(overall):
            axis.axvline(overall, color=colour, linestyle="--", linewidth=1.2)
    axis.set_yticks(range(len(classes)))
    axis.set_yticklabels(classes)
    axis.set_ylim(-0.7, len(classes) - 0.3)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("fraction of 'shape' decisions")
    top = axis.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda x: 1 - x))
    top.set_xlabel("fraction of 'texture' decisions")
    axis.grid(axis="x", alpha=0.3)
    axis.set_title("Shape bias (dashed: overall)", pad=40)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _png(figure)


def robustness_plot(results: Sequence[Result]) -> Optional[bytes]:
    """Accuracy against corruption severity (0 = clean), mean over corruptions, one line per model and
    corruption set, with 95% Wilson intervals over the images of each severity."""
    from .stats import wilson_interval

    chosen = [r for r in results if r.task == "corruption_robustness" and r.metrics.get("acc_per_severity")]
    if not chosen:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    colours = plt.get_cmap("tab10")
    for m, result in enumerate(chosen):
        metrics = result.metrics
        points = sorted((int(s), a) for s, a in metrics["acc_per_severity"].items())
        if "clean_acc" in metrics:
            points = [(0, metrics["clean_acc"])] + points
        per_severity = metrics.get("images_per_set", 0) * len({k.rpartition("/")[0] for k in metrics.get("acc", {})})
        sizes = {0: metrics.get("clean_images", 0)}
        bounds = [wilson_interval(round(a * sizes.get(s, per_severity)), sizes.get(s, per_severity)) for s, a in points]
        xs, ys = zip(*points)
        errors = [[y - b[0] for y, b in zip(ys, bounds)], [b[1] - y for y, b in zip(ys, bounds)]]
        axis.errorbar(xs, ys, yerr=errors, marker=MARKERS[m % len(MARKERS)], color=colours(m % 10), capsize=3,
                      label=f"{result.label} ({result.dataset})")
    axis.set_xticks(range(0, 6))
    axis.set_xticklabels(["clean", "1", "2", "3", "4", "5"])
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("corruption severity")
    axis.set_ylabel("accuracy (mean over corruptions)")
    axis.set_title("Corruption robustness (bars: 95% intervals)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _png(figure)


def cost_figure(costs: Sequence[RunCost], results: Sequence[Result]):
    """The accuracy-vs-calls figure (None if no run has both): one colour per run, one marker per
    dataset, and every label in the legend beside the axes, so no label can cover another or the title."""
    points = [(c.mean_calls, cost_accuracy(c, list(results)), c) for c in costs]
    points = [(x, y, c) for x, y, c in points if y is not None and x > 0]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    colours = plt.get_cmap("tab10")
    datasets = sorted({c.dataset for _, _, c in points})
    for n, (x, y, cost) in enumerate(points):
        d = datasets.index(cost.dataset)
        axis.scatter([x], [y], color=colours(n % 10), marker=MARKERS[d % len(MARKERS)], s=45, zorder=3,
                     label=f"{cost.model_fullname}, {cost.protocol + ': ' if cost.protocol else ''}"
                           f"{cost.settings_label} ({cost.dataset})")
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    axis.margins(x=0.15)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("mean UNet calls per image (log)")
    axis.set_ylabel("accuracy")
    axis.set_title("Accuracy vs compute (diffusion runs)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="run (marker: dataset)",
                title_fontsize=7)
    return figure


def cost_plot(costs: Sequence[RunCost], results: Sequence[Result]) -> Optional[bytes]:
    """Accuracy against mean UNet calls per image, one point per diffusion run (PNG)."""
    figure = cost_figure(costs, results)
    return None if figure is None else _png(figure)
