"""A leaderboard CSV whose rows are the ones `clip_benchmark build` writes for the same JSONs.

`clip_benchmark build` flattens each result into one row: its metrics, then every other
top-level key (dataset, model, pretrained, task, language, ...), plus `model_fullname` =
model + ' ' + pretrained. Building rows the same way keeps the columns identical, so
diffusion and CLIP rows concatenate with rows from `clip_benchmark build`. Two deliberate
differences, neither affecting the columns: a stable column order (identity columns first,
where `build` uses set order), and nested values (e.g. shape bias `per_class`, a diffusion result's
`diffusion` section) as JSON rather than Python reprs. Diffusion results carry a top-level `protocol`
(the `--diffusion_protocol` label, with overridden settings), so `build` has that column too; here it is
always present, empty for other rows. Two additions: the main metric's 95% Wilson interval and its n
(`ci95_low`, `ci95_high`, `ci95_n`, empty when n is unknown), and an empty `image_acc` for
caption selection with one image per instance (it is 1 by construction there).
"""
from __future__ import annotations

import csv
import json
from typing import Any, Sequence

from .collect import Result, images_per_instance

FIRST_COLUMNS = ("model_fullname", "model", "pretrained", "dataset", "task", "language", "protocol")
INTERVAL_COLUMNS = ("ci95_low", "ci95_high", "ci95_n")


def leaderboard_row(data: dict) -> dict[str, Any]:
    """One result JSON -> one row, as `clip_benchmark build` makes it."""
    row = dict(data["metrics"])
    row.update({k: v for k, v in data.items() if k != "metrics"})
    row["model_fullname"] = f"{row['model']} {row['pretrained']}"
    row.setdefault("protocol", "")  # empty: not a diffusion run, or one from before protocols were recorded
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}


def _with_uncertainty(result: Result) -> dict[str, Any]:
    """`clip_benchmark build`'s row, plus the main metric's interval; no trivial image accuracy."""
    from .tables import interval

    row = leaderboard_row(result.data)
    if result.task == "image_caption_selection" and images_per_instance(result) == 1 and "image_acc" in row:
        row["image_acc"] = ""
    bounds = interval(result)
    row.update(zip(INTERVAL_COLUMNS, ("", "", "") if bounds is None else (round(bounds[0], 6),
                                                                            round(bounds[1], 6), bounds[2])))
    return row


def write_leaderboard(results: Sequence[Result], path: str) -> list[str]:
    """Write the CSV; returns its columns."""
    rows = [_with_uncertainty(r) for r in results]
    present = {key for row in rows for key in row}
    columns = [c for c in FIRST_COLUMNS if c in present] + sorted(present - set(FIRST_COLUMNS))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return columns
