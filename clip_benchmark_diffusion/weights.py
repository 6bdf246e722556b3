"""What identifies a checkpoint's weights, and a cheap check that its safetensors are whole.

A record may only be reused by a run of the *same weights*: a folder path says nothing once
its files are retrained or replaced in place. So the record header carries a content hash of
every file the model loads. Hashing an SD-scale checkpoint takes seconds, so each file's hash
is cached by (real path, size, mtime, inode, change time) and recomputed when any of them differs.

The change time (st_ctime_ns) is what makes the cache safe against same-size in-place rewrites
(`cp -p`, `rsync --inplace`, `unzip -o`, `touch -r`): they can restore size, inode and mtime, but
every write and every `utime` sets the change time to "now", and no user call can set it back.
It also changes on chmod, chown and new hard links: those only cost one re-hash. What is not
covered: a filesystem that does not keep a change time (some FUSE and network mounts report
mtime or 0 for it), and a file changed by someone who resets the system clock.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Sequence

#: files of a pipeline folder that say nothing about the model (docs, images, git metadata)
IGNORED_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".gif", ".gitattributes")
_CHUNK = 1 << 22


def hash_cache_file() -> str:
    """Where file hashes are cached (`CLIP_BENCHMARK_DIFFUSION_CACHE` or the XDG cache folder)."""
    root = os.environ.get("CLIP_BENCHMARK_DIFFUSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "clip_benchmark_diffusion")
    return os.path.join(root, "file_hashes.json")


def model_files(folder: str, parts: Sequence[str]) -> list[str]:
    """`model_index.json` and every file of the given part subfolders, relative to `folder`, sorted."""
    found = ["model_index.json"] if os.path.isfile(os.path.join(folder, "model_index.json")) else []
    for part in parts:
        for root, dirs, files in os.walk(os.path.join(folder, part), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.relpath(os.path.join(root, name), folder) for name in files
                         if not name.startswith(".") and not name.lower().endswith(IGNORED_SUFFIXES))
    return sorted(found)


def weights_fingerprint(folder: str, parts: Sequence[str]) -> dict[str, str]:
    """{part: hash of its files' names and contents} plus "all": a hash over every part."""
    cache_path = hash_cache_file()
    cache = _load_cache(cache_path)
    changed = False
    per_part: dict[str, hashlib.blake2b] = {}
    for relative in model_files(folder, parts):
        digest, fresh = _file_digest(os.path.join(folder, relative), cache)
        changed |= fresh
        part = relative.split(os.sep, 1)[0] if os.sep in relative else "index"
        per_part.setdefault(part, hashlib.blake2b(digest_size=10)).update(f"{relative}={digest};".encode())
    if changed:
        _save_cache(cache_path, cache)
    result = {part: h.hexdigest() for part, h in sorted(per_part.items())}
    result["all"] = hashlib.blake2b(json.dumps(result, sort_keys=True).encode(), digest_size=10).hexdigest()
    return result


def _file_digest(path: str, cache: dict) -> tuple[str, bool]:
    real = os.path.realpath(path)
    info = os.stat(real)
    stamp = file_stamp(info)
    cached = cache.get(real)
    if isinstance(cached, list) and cached[:-1] == stamp:  # entries of older versions (no ctime) never match
        return cached[-1], False
    h = hashlib.blake2b(digest_size=16)
    with open(real, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            h.update(chunk)
    cache[real] = stamp + [h.hexdigest()]
    return h.hexdigest(), True


def file_stamp(info: os.stat_result) -> list[int]:
    """What must be unchanged for a cached hash to be reused: size, mtime, inode and change time."""
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


def _load_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            cache = json.load(handle)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: hashes are recomputed


def _save_cache(path: str, cache: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(cache, handle)
        os.replace(temporary, path)  # readers see the old or the new cache, never half of one
    except OSError:
        pass  # a read-only home only costs re-hashing next time


def safetensors_problem(path: str) -> str | None:
    """Why a safetensors file cannot be loaded (truncated, bad header), or None if it is whole.
    Reads only the header: the 8-byte header length, the JSON header, and the data size it implies."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, too short for a safetensors header"
            (header_length,) = struct.unpack("<Q", prefix)
            if 8 + header_length > size:
                return f"its header claims {header_length} bytes but the file has {size}"
            header = json.loads(handle.read(header_length))
    except (OSError, ValueError) as error:
        return f"unreadable header ({type(error).__name__})"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return f"truncated or padded: its tensors need {expected} bytes, the file has {size}"
    return None
