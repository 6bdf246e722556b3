"""Per-image results written as they are produced, and read back to resume a dead run.

One JSON-lines file per run: a header (settings, model and its weights, candidates), one line
per image, and a summary with the true labels once the dataset is done. Each image line is
flushed as soon as that image's decision is made, so a run killed after N images keeps N
images; rerunning the same command with the same settings, weights and candidates skips them
(images are matched by a hash of their pixels).

What is guaranteed (and tested):

* earlier image lines are reused only when the header's settings, model (including the hash
  of its weight files) and candidates are the same, ignoring only `RECORD_IGNORED_SETTINGS`;
* a record of other settings is never overwritten or deleted: it is moved to
  `X.diffusion.<fingerprint>.jsonl` when another run first writes to `X.diffusion.jsonl`, and
  moved back when a run with its settings comes again; a file is only created or moved once an
  image (or the summary) is written, so a run that fails early leaves every file as it was;
* one process at a time writes a record (an OS lock on `X.diffusion.jsonl.lock` beside the record's
  real path, removed when the run ends); a second run on the same record, by any path to it
  (symlinks included), stops with one line;
* a torn last line (disk full, power loss) is dropped with a warning and the run goes on.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from .errors import RecordError, warn  # noqa: F401 (re-exported: its old home)
from .decisions import ImageScores
from .settings import RECORD_IGNORED_SETTINGS

RECORD_SUFFIX = ".diffusion.jsonl"


def image_record(index: int, scores: ImageScores, candidate_names: Sequence[str],
                 seconds: Optional[float] = None) -> dict[str, Any]:
    """The JSON line of one image (`seconds`: wall time from the previous image's decision
    to this one's, so the seconds of a run's images add up to its scoring time)."""
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
        "capped": scores.capped,
    }
    if seconds is not None:
        record["seconds"] = round(seconds, 4)
    record["per_draw_f64"] = encode_per_draw(scores.per_draw, scores.draws)
    return record


def encode_per_draw(per_draw: torch.Tensor, draws: torch.Tensor) -> str:
    """Every evaluated per-draw error, exactly (float64), compactly: each candidate's evaluated
    draws are a prefix of the image's draw sequence (every round extends all open candidates
    alike), so only those prefixes are kept, candidate after candidate, little-endian, base64.
    The per-candidate lengths are the line's `draws`."""
    values = [per_draw[k, :n] for k, n in enumerate(draws.tolist()) if n]
    flat = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    return base64.b64encode(flat.to(torch.float64).numpy().astype("<f8").tobytes()).decode("ascii")


def per_draw_errors(image: dict[str, Any]) -> torch.Tensor:
    """(candidates, draws) float64 per-draw errors of an image line, NaN where not evaluated; from
    the compact field, or the JSON lists of records written before it."""
    if "per_draw_f64" in image:
        draws = [int(n) for n in image["draws"]]
        flat = torch.from_numpy(np.frombuffer(base64.b64decode(image["per_draw_f64"]), dtype="<f8").copy())
        if flat.numel() != sum(draws):
            raise ValueError(f"image {image.get('image_key')}: per-draw errors hold {flat.numel()} values, its draws "
                             f"say {sum(draws)}")
        table = torch.full((len(draws), max(draws, default=0)), float("nan"), dtype=torch.float64)
        offset = 0
        for k, n in enumerate(draws):
            table[k, :n] = flat[offset:offset + n]
            offset += n
        return table
    if "per_draw" in image:
        return torch.tensor([[float("nan") if v is None else v for v in row] for row in image["per_draw"]],
                            dtype=torch.float64)
    raise ValueError(f"image {image.get('image_key')}: the record kept no per-draw errors")


def _round(value: float) -> Optional[float]:
    return None if value != value else float(f"{value:.7g}")  # NaN -> null


# ------------------------------------------------------------------------------ locking
#: locks this process holds: real path -> [open lock file, how many holders]
_HELD_LOCKS: dict[str, list] = {}


@contextmanager
def record_lock(path: str) -> Iterator[None]:
    """Hold the OS lock of record `path` (re-entrant within a process). Another process holding
    it raises RecordError at once: two runs appending to one record would interleave lines.
    The lock is taken on the real path (a symlink reaches the same lock) and its file is removed
    when the last holder lets go, so no `.lock` file outlives a run that ends."""
    if os.path.isdir(path):
        raise RecordError(f"the record {path} is a folder; pass a file path, e.g. "
                          f"{os.path.join(path, 'run.diffusion.jsonl')}")
    key = os.path.realpath(path)
    held = _HELD_LOCKS.get(key)
    if held is None:
        held = [_acquire(key, shown=path), 0]
        _HELD_LOCKS[key] = held
    held[1] += 1
    try:
        yield
    finally:
        held[1] -= 1
        if held[1] == 0:
            del _HELD_LOCKS[key]
            _release(held[0])


def lock_path(path: str) -> str:
    """The lock file of record `path`: beside its real path."""
    return os.path.realpath(path) + ".lock"


def _release(handle) -> None:
    """Remove the lock file while still holding it, then let go (closing releases the lock); a run
    that opened the file before the removal sees it is gone and locks the new one (`_acquire`)."""
    try:
        os.remove(handle.name)
    except OSError:
        pass
    handle.close()


def _acquire(real: str, shown: Optional[str] = None):
    os.makedirs(os.path.dirname(real), exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no OS lock available
        return open(real + ".lock", "a+", encoding="utf-8")
    for _ in range(100):
        handle = open(real + ".lock", "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RecordError(f"the record {shown or real} is being written by another run ({owner}); wait for it "
                              "to finish (then rerun to reuse its images) or pass --diffusion_records with another "
                              "path") from None
        try:
            current = os.stat(handle.name).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the previous holder removed this file while we waited: lock the new one
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


#: recorders with an open file, so a failed run can close them (and release their lock)
_OPEN_RECORDERS: list = []


def close_recorders(path: str) -> None:
    """Close every recorder of this process still open on record `path` (after a run failed
    mid-way): their lines are all on disk already; this only lets go of the file and its lock."""
    real = os.path.realpath(path)
    for recorder in [r for r in _OPEN_RECORDERS if os.path.realpath(r.path) == real]:
        recorder.close()


# ------------------------------------------------------------------------------ reading
def _read_lines(path: str) -> tuple[list[dict], int]:
    """The parsed lines of a record and the byte length of its intact part. A torn last line
    (unterminated, or not JSON with nothing after it) is dropped with a warning; a broken line
    anywhere else is a RecordError naming the file and line."""
    with open(path, "rb") as handle:
        pieces = handle.read().split(b"\n")
    lines: list[dict] = []
    offset = intact = 0
    for number, raw in enumerate(pieces, start=1):
        terminated = number < len(pieces)
        offset += len(raw) + terminated
        if raw.strip():
            try:
                if not terminated:
                    raise ValueError("no newline")
                line = json.loads(raw)
            except ValueError:
                if any(rest.strip() for rest in pieces[number:]):
                    raise RecordError(f"{path}, line {number}: not valid JSON (the file was changed by hand or "
                                      "damaged); move it away to start this record afresh") from None
                warn(f"{path}, line {number}: dropped a torn last line (the run writing it was interrupted)")
                break
            problem = _line_problem(line)
            if problem:
                raise RecordError(f"{path}, line {number}: {problem} (the file was changed by hand or is not a "
                                  "record); move it away to start this record afresh")
            lines.append(line)
        intact = offset
    return lines, intact


def _line_problem(line: Any) -> Optional[str]:
    """Why a parsed line cannot be a record line, or None."""
    if not isinstance(line, dict):
        return f"valid JSON but not an object ({type(line).__name__})"
    if line.get("type") == "image" and not isinstance(line.get("image_key"), str):
        return "an image line without an image_key"
    return None


def read_records(path: str) -> dict[str, Any]:
    """Load a run's record file: {"header": ..., "images": [...], "summary": ... or None}."""
    header, images, summary = None, [], None
    for record in _read_lines(path)[0]:
        kind = record.get("type")
        if kind == "header":
            header = record
        elif kind == "image":
            images.append(record)
        elif kind == "summary":
            summary = record
    return {"header": header, "images": images, "summary": summary}


def _comparable(header: dict[str, Any]) -> str:
    """The header fields that must match for earlier image lines to be reused."""
    keys = ("settings", "model", "candidates", "task")
    fields = {k: header.get(k) for k in keys}
    for part in ("settings", "model"):
        if isinstance(fields[part], dict):
            fields[part] = {k: v for k, v in fields[part].items() if k not in RECORD_IGNORED_SETTINGS}
    return json.dumps(fields, sort_keys=True)


def settings_fingerprint(header: dict[str, Any]) -> str:
    """A short name for what makes records reusable (settings, model weights, candidates)."""
    return hashlib.blake2b(_comparable(header).encode(), digest_size=5).hexdigest()


def record_stem(path: str) -> str:
    """`X` of `X.diffusion.jsonl` (or of any other record file name `X.ext`)."""
    return path[: -len(RECORD_SUFFIX)] if path.endswith(RECORD_SUFFIX) else os.path.splitext(path)[0]


def archive_path(path: str, fingerprint: str) -> str:
    """Where the record of other settings is kept: `X.diffusion.<fingerprint>.jsonl`."""
    return f"{record_stem(path)}.diffusion.{fingerprint}.jsonl"


# ------------------------------------------------------------------------------ writing
class RunRecorder:
    """Appends a run's records to `path`; remembers images already scored with the same header."""

    def __init__(self, path: str, header: dict[str, Any], also_read: Sequence[str] = ()) -> None:
        """`also_read`: other records of the same run (other ranks' files): their images of these
        settings count as done here too, but are never written to."""
        self.path = path
        self.header = {"type": "header", **header}
        self.fingerprint = settings_fingerprint(self.header)
        self.done: dict[str, dict] = {}
        self._in_file: set[str] = set()  # image keys in this record's own file
        self._lock = record_lock(path)
        self._lock.__enter__()
        _OPEN_RECORDERS.append(self)
        self._handle = None
        try:
            #: the file our earlier images come from (`path` itself or our archive), if any
            self.resumed_from: Optional[str] = None
            self._intact_bytes = 0
            for candidate in (path, archive_path(path, self.fingerprint)):
                if self._load(candidate):
                    break
            for other in also_read:
                images = (self._matching(other) or ({}, 0))[0]
                self.done.update((key, line) for key, line in images.items() if key not in self.done)
        except BaseException:
            self.close()
            raise
        self.previous_images = len(self.done)

    def merge(self, paths: Sequence[str]) -> int:
        """Append the images of other records of these settings that this one lacks, then delete
        those files (everything in them is now here). Returns how many images were added."""
        added = 0
        for path in paths:
            images = (self._matching(path) or ({}, 0))[0]
            for key, line in images.items():
                if key not in self._in_file:
                    self.add(line)
                    added += 1
            if images:
                os.remove(path)
        return added

    def _matching(self, path: str) -> Optional[tuple[dict[str, dict], int]]:
        """({image key: line}, intact byte length) of a record file written with these settings,
        or None if there is no such file or it holds other settings."""
        if not os.path.isfile(path):
            return None
        lines, intact = _read_lines(path)
        if not lines or lines[0].get("type") != "header" or settings_fingerprint(lines[0]) != self.fingerprint:
            return None
        return {line["image_key"]: line for line in lines if line.get("type") == "image"}, intact

    def _load(self, path: str) -> bool:
        found = self._matching(path)
        if found is None:
            return False
        self.done, self._intact_bytes = found
        self._in_file = set(self.done)
        self.resumed_from = path
        return True

    def _open(self) -> None:
        """First write: put another run's record aside, bring ours back, then append."""
        if os.path.isfile(self.path) and self.resumed_from != self.path:
            self._set_aside(self.path)
        if self.resumed_from is not None and self.resumed_from != self.path:
            os.replace(self.resumed_from, self.path)
        if self.resumed_from is not None:
            self._handle = open(self.path, "r+b")
            self._handle.truncate(self._intact_bytes)  # drops a torn last line
            self._handle.seek(self._intact_bytes)
        else:
            self._handle = open(self.path, "wb")
            self._write(self.header)

    def _set_aside(self, path: str) -> None:
        lines, _ = _read_lines(path)
        has_header = bool(lines) and lines[0].get("type") == "header"
        if has_header and not any(line.get("type") == "image" for line in lines):
            os.remove(path)  # a header without images holds nothing to keep
            return
        fingerprint = settings_fingerprint(lines[0]) if has_header else "unknown"
        target, n = archive_path(path, fingerprint), 1
        while os.path.exists(target):
            target, n = archive_path(path, f"{fingerprint}-{n}"), n + 1
        os.replace(path, target)
        warn(f"{path} held a record of other settings (or another model or candidates); it is kept as {target}")

    def _write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            self._open()
        self._handle.write((json.dumps(record) + "\n").encode("utf-8"))
        self._handle.flush()

    def cached(self, image_key: int) -> Optional[dict]:
        return self.done.get(f"{image_key:016x}")

    def add(self, record: dict[str, Any]) -> None:
        self.done[record["image_key"]] = record
        self._in_file.add(record["image_key"])
        self._write(record)

    def finish(self, summary: dict[str, Any]) -> None:
        self._write({"type": "summary", **summary})
        self.close()

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None
        if self in _OPEN_RECORDERS:
            _OPEN_RECORDERS.remove(self)
