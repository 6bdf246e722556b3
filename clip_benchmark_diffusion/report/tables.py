"""The report's tables, built once and rendered as markdown or HTML."""
from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .collect import Result, RunCost, correctness, cost_accuracy, successes_and_trials
from .stats import mcnemar_exact, wilson_interval

MISSING = "–"
PROTOCOL_NOTE = (" A diffusion model's column names the protocol it was scored under (`--diffusion_protocol`, "
                 "with any overridden settings in brackets): the same model under two protocols gets two columns, "
                 "and columns of different protocols were computed differently.")


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    columns_right: set = field(default_factory=set)  # indices of numeric columns


def percent(value: Optional[float]) -> str:
    """0.734 -> '73.4'; undefined -> '–' (NaN is clip_benchmark's 'does not apply')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{100 * value:.1f}"


def interval(result: Result) -> Optional[tuple[float, float, int]]:
    """(low, high, n) of the 95% Wilson interval of a result's main metric, if its n is known."""
    counts = successes_and_trials(result)
    if counts is None or counts[1] == 0:
        return None
    low, high = wilson_interval(*counts)
    return low, high, counts[1]


def with_interval(result: Result) -> str:
    """'73.4 [64.0–81.0]' (main metric and its 95% interval, in %), or just the value if n is unknown."""
    value, bounds = percent(result.main_metric[1]), interval(result)
    if bounds is None or value == MISSING:
        return value
    return f"{value} [{100 * bounds[0]:.1f}–{100 * bounds[1]:.1f}]"


def _number(value: Optional[float], digits: int = 1) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def models_of(results: Sequence[Result]) -> list[str]:
    """Model columns (clip_benchmark's `model_fullname`, with its protocol if it has one), sorted."""
    return sorted({r.label for r in results})


def _row_label(result: Result) -> str:
    language = result.data.get("language", "en")
    suffix = f", {language}" if language not in ("en", None) else ""
    return f"{result.dataset} ({result.main_metric[0]}{suffix})"


def results_table(results: Sequence[Result]) -> Table:
    """Rows = datasets (with the metric shown), columns = models, cells = metric in %."""
    models = models_of(results)
    cells: dict[str, dict[str, str]] = {}
    for result in results:  # sorted by path: a later file for the same cell wins
        cells.setdefault(_row_label(result), {})[result.label] = with_interval(result)
    rows = [[label] + [cells[label].get(m, MISSING) for m in models] for label in sorted(cells)]
    return Table("Results", ["dataset (metric)"] + models, rows,
                 note="Values in %, with the 95% Wilson interval over images in brackets where the number of "
                      "images is known (per-image predictions or records beside the result; caption selection: "
                      "its instance count; shape bias: its shape + texture decisions). Caption selection: text_acc "
                      "(chance 50 for two captions); image_acc is not shown for one image per instance, where it "
                      "is 100% by construction. Shape bias: share of shape decisions among shape + texture "
                      "decisions." + PROTOCOL_NOTE,
                 columns_right=set(range(1, len(models) + 1)))


def paired_table(results: Sequence[Result]) -> Optional[Table]:
    """Exact McNemar test for every two models scored on the same images of a dataset (same task and
    number of images, in the same order), so a difference reads as significant or not."""
    by_dataset: dict[tuple[str, str], list[tuple[Result, list[bool]]]] = {}
    for result in results:
        correct = correctness(result)
        if correct:
            by_dataset.setdefault((result.dataset, result.task), []).append((result, correct))
    rows = []
    for (dataset, _), entries in sorted(by_dataset.items()):
        entries = sorted(entries, key=lambda entry: entry[0].label)
        for i, (a, correct_a) in enumerate(entries):
            for b, correct_b in entries[i + 1:]:
                if len(correct_a) != len(correct_b) or a.label == b.label:
                    continue
                test = mcnemar_exact(correct_a, correct_b)
                rows.append([dataset, a.label, percent(sum(correct_a) / test.n), b.label,
                             percent(sum(correct_b) / test.n), str(test.n), str(test.only_a), str(test.only_b),
                             f"{test.p_value:.3g}", "yes" if test.significant else "no"])
    if not rows:
        return None
    return Table("Paired comparisons (exact McNemar)",
                 ["dataset", "model A", "A %", "model B", "B %", "images", "only A right", "only B right",
                  "p", "significant (p < 0.05)"], rows,
                 note="Both models on the same images, in the same order. p is the two-sided exact McNemar test: a "
                      "binomial test at 1/2 of the images exactly one of the two models gets right. Two diffusion "
                      "models named with different protocols were scored differently: the test compares the "
                      "two (model, protocol) pairs, not the models alone.",
                 columns_right={2, 4, 5, 6, 7, 8})


def published_table(results: Sequence[Result]) -> Optional[Table]:
    """Each result of a paper's protocol beside that paper's published numbers for the dataset (carried
    in the result's `diffusion.protocol.published`), with what may make them differ: model, overrides."""
    rows = []
    for result in results:
        protocol = (result.data.get("diffusion") or {}).get("protocol") or {}
        published = protocol.get("published") or {}
        if not published:
            continue
        rows.append([result.dataset, protocol.get("name", "?"), result.label, with_interval(result),
                     "; ".join(f"{model} {value:.1f}" for model, value in published.items()),
                     "yes" if protocol.get("paper_model") == result.data.get("pretrained") else
                     f"no (paper: {protocol.get('paper_model')})",
                     ", ".join(sorted(protocol.get("overrides") or {})) or "none"])
    if not rows:
        return None
    return Table("Against the papers' published numbers",
                 ["dataset", "protocol", "model (as run)", "yours %", "published %", "paper's model",
                  "overridden settings"], sorted(rows),
                 note="Published: the paper's own top-1 accuracy for this dataset (see docs/protocols.md). Yours "
                      "is comparable to the paper's diffusion number when the model is the paper's and nothing "
                      "was overridden; the papers' subsets, noise sharing and timestep grids may still differ "
                      "(each protocol's note, recorded with the result).",
                 columns_right={3})


def shape_bias_table(results: Sequence[Result]) -> Optional[Table]:
    """Shape bias with the decision counts behind it, one row per (model, dataset)."""
    rows = [[r.label, r.dataset, percent(r.metrics.get("shape_bias")),
             percent(r.metrics.get("shape_accuracy")), percent(r.metrics.get("texture_accuracy")),
             str(r.metrics.get("conflict_images", MISSING))]
            for r in results if r.task == "shape_bias"]
    if not rows:
        return None
    return Table("Shape bias (cue conflict)", ["model", "dataset", "shape bias", "shape acc.", "texture acc.",
                                               "conflict images"], sorted(rows), columns_right={2, 3, 4, 5})


def _cost_accuracy(cost: RunCost, results: Sequence[Result]) -> str:
    """A run's accuracy with its 95% Wilson interval over the run's images."""
    value = cost_accuracy(cost, list(results))
    if value is None or math.isnan(value) or not cost.images:
        return percent(value)
    low, high = wilson_interval(round(value * cost.images), cost.images)
    return f"{percent(value)} [{100 * low:.1f}–{100 * high:.1f}]"


def cost_table(costs: Sequence[RunCost], results: Sequence[Result]) -> Optional[Table]:
    """Per diffusion run: UNet calls and seconds per image, next to the accuracy they bought."""
    if not costs:
        return None
    rows = [[c.model_fullname, c.dataset, c.protocol or MISSING, c.settings_label, str(c.images),
             _number(c.mean_calls),
             f"{c.min_calls}–{c.max_calls}", _number(c.seconds_per_image, 3), _cost_accuracy(c, results),
             os.path.basename(c.path)]
            for c in costs]
    return Table("Diffusion cost per image", ["model", "dataset", "protocol", "strategy", "images",
                                              "UNet calls / image", "calls range", "seconds / image", "accuracy %",
                                              "records"],
                 rows, note="From the per-image records (*.diffusion.jsonl). Seconds are shown when the "
                            "records carry them; protocol '–': a record written before protocols were recorded.",
                 columns_right={4, 5, 6, 7, 8})


def to_markdown(table: Table) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = ["---:" if i in table.columns_right else "---" for i in range(len(table.header))]
    parts = [f"## {table.title}", "", line(table.header), "|" + "|".join(rule) + "|"]
    parts += [line(row) for row in table.rows]
    if table.note:
        parts += ["", table.note]
    return "\n".join(parts) + "\n"


def to_html(table: Table) -> str:
    def row(cells: Sequence[str], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag}{" class=num" if i in table.columns_right else ""}>{html.escape(c)}</{tag}>'
                                for i, c in enumerate(cells)) + "</tr>"

    body = "\n".join(row(r, "td") for r in table.rows)
    note = f"<p class=note>{html.escape(table.note)}</p>" if table.note else ""
    return (f"<h2>{html.escape(table.title)}</h2>\n<table>\n<thead>{row(table.header, 'th')}</thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>\n{note}\n")
