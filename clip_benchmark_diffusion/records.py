"""Per-image results written as they are produced, and read back to resume a dead run.

One JSON-lines file per run: a header (settings, model, candidates), one line per image,
and a summary with the true labels once the dataset is done. Lines are flushed as they are
written, so a run killed after N images keeps N images; rerunning the same command with
the same settings skips them (images are matched by a hash of their pixels).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from .scorer import ImageScores

#: above this many (candidate x draw) values per image, per-draw errors are left out
PER_DRAW_LIMIT = 20000


def image_record(index: int, scores: ImageScores, candidate_names: Sequence[str],
                 seconds: Optional[float] = None) -> dict[str, Any]:
    """The JSON line of one image (`seconds`: its share of the wall time of the scoring call)."""
    ranking = scores.ranking
    record = {
        "type": "image",
        "index": index,
        "image_key": f"{scores.image_key:016x}",
        "prediction": ranking[0],
        "predicted_class": candidate_names[ranking[0]],
        "ranking": ranking,
        "errors": [_round(e) for e in scores.errors.tolist()],
        "draws": scores.draws.tolist(),
        "calls": scores.calls,
        "confidence": round(scores.confidence, 6),
        "softmax_confidence": _round(scores.softmax_confidence),
        "survivors_per_round": scores.survivors_per_round,
        "dropped_round": scores.dropped_round,
        "timesteps": scores.timesteps.tolist(),
    }
    if seconds is not None:
        record["seconds"] = round(seconds, 4)
    if scores.per_draw.numel() <= PER_DRAW_LIMIT:
        record["per_draw"] = [[_round(v) for v in row] for row in scores.per_draw.tolist()]
    return record


def _round(value: float) -> Optional[float]:
    return None if value != value else float(f"{value:.7g}")  # NaN -> null


class RunRecorder:
    """Appends a run's records to `path`; remembers images already scored with the same header."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        self.header = {"type": "header", **header}
        self.done: dict[str, dict] = {}
        self._comparable = _comparable(self.header)
        if os.path.isfile(path):
            self._load_previous()
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fresh = not self.done
        self._handle = open(path, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._write(self.header)

    def _load_previous(self) -> None:
        with open(self.path, encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
        if not lines or lines[0].get("type") != "header" or _comparable(lines[0]) != self._comparable:
            os.replace(self.path, self.path + ".previous")  # another run's records: keep them aside
            return
        self.done = {line["image_key"]: line for line in lines if line.get("type") == "image"}

    def _write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def cached(self, image_key: int) -> Optional[dict]:
        return self.done.get(f"{image_key:016x}")

    def add(self, record: dict[str, Any]) -> None:
        self.done[record["image_key"]] = record
        self._write(record)

    def finish(self, summary: dict[str, Any]) -> None:
        self._write({"type": "summary", **summary})
        self.close()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()


#: settings that change how fast images are scored, not their scores (beyond float rounding)
SPEED_ONLY_FIELDS = ("batch_size", "channels_last", "compile")


def _comparable(header: dict[str, Any]) -> str:
    """The header fields that must match for earlier image lines to be reused."""
    keys = ("settings", "model", "candidates")
    fields = {k: header.get(k) for k in keys}
    for part in ("settings", "model"):
        if isinstance(fields[part], dict):
            fields[part] = {k: v for k, v in fields[part].items() if k not in SPEED_ONLY_FIELDS}
    return json.dumps(fields, sort_keys=True)


def read_records(path: str) -> dict[str, Any]:
    """Load a run's record file: {"header": ..., "images": [...], "summary": ... or None}."""
    header, images, summary = None, [], None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            kind = record.get("type")
            if kind == "header":
                header = record
            elif kind == "image":
                images.append(record)
            elif kind == "summary":
                summary = record
    return {"header": header, "images": images, "summary": summary}
