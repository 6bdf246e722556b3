"""Writing the world's training set and test sets as clip_benchmark ``wds/`` datasets.

Each dataset is a folder ``<out>/<name>/`` laid out the way
``clip_benchmark.datasets.builder.build_wds_dataset`` reads it::

    <name>/<split>/nshards.txt, <split>/0.tar, 1.tar, ...
    <name>/dataset_type.txt                       "classification" or "retrieval"
    <name>/classnames.txt                         (classification only)
    <name>/zeroshot_classification_templates.txt  (classification only)

Tar members get a fixed mtime and images are PNG-encoded by us, so the same
arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from .render import IMAGE_SIZE
from .scenes import TASKS, TEMPLATES, EvalSample, classnames, eval_samples, training_sample

SHARD_SIZE: int = 1000
# `clip_benchmark eval` reads wds/ datasets with 4 DataLoader workers by default
# and webdataset fails on a worker that gets no shard, so write >= 4 shards.
MIN_SHARDS: int = 4
_TAR_MTIME = 0.0  # fixed member timestamps -> reproducible tar files

Record = dict[str, bytes | str]


def png_bytes(image: Image.Image) -> bytes:
    """Lossless, deterministic PNG encoding (what goes into the shards)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_lines(path: str, lines: Iterable[object]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(f"{line}\n" for line in lines)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _write_shards(split_dir: str, records: Iterator[Record], n: int, desc: str) -> None:
    """Write ``n`` records in order into ``split_dir/{0,1,...}.tar`` plus ``nshards.txt``.

    Shards hold at most SHARD_SIZE records, are near-equal in size and never
    empty, and there are at least MIN_SHARDS of them when ``n`` allows.
    """
    os.makedirs(split_dir, exist_ok=True)
    nshards = max(1, math.ceil(n / SHARD_SIZE), min(MIN_SHARDS, n))
    with tqdm(total=n, desc=desc, unit="img") as progress:
        for shard in range(nshards):
            size = (shard + 1) * n // nshards - shard * n // nshards
            with wds.TarWriter(os.path.join(split_dir, f"{shard}.tar"), encoder=False, mtime=_TAR_MTIME) as sink:
                for record in islice(records, size):
                    sink.write({k: _as_bytes(v) if k != "__key__" else v for k, v in record.items()})
                    progress.update()
    # drop shards left over from an earlier, larger run so the folder is self-consistent
    stale = nshards
    while os.path.exists(os.path.join(split_dir, f"{stale}.tar")):
        os.remove(os.path.join(split_dir, f"{stale}.tar"))
        stale += 1
    _write_lines(os.path.join(split_dir, "nshards.txt"), [nshards])


def _write_info(root: str, dataset_type: str, **info: object) -> None:
    """Dataset type for clip_benchmark, plus generation arguments for provenance."""
    _write_lines(os.path.join(root, "dataset_type.txt"), [dataset_type])
    with open(os.path.join(root, "info.json"), "w", encoding="utf-8") as file:
        json.dump({"image_size": IMAGE_SIZE, **info}, file, indent=2, sort_keys=True)
        file.write("\n")


def write_training_set(out_dir: str, n: int, seed: int = 0) -> str:
    """Write ``n`` training (png, txt caption) samples to ``<out_dir>/train/train/``; returns ``<out_dir>/train``.

    The folder is typed "retrieval" so clip_benchmark can also read it as (image, [caption]).
    """
    root = os.path.join(out_dir, "train")

    def records() -> Iterator[Record]:
        for i in range(n):
            sample = training_sample(i, seed)
            yield {"__key__": f"{i:08d}", "png": png_bytes(sample.image), "txt": sample.caption}

    _write_shards(os.path.join(root, "train"), records(), n, desc="train")
    _write_info(root, "retrieval", split="train", n=n, seed=seed)
    return root


def _test_record(index: int, sample: EvalSample) -> Record:
    """Tar entries of one test sample: png + (cls | txt) [+ texture_cls]."""
    record: Record = {"__key__": f"{index:08d}", "png": png_bytes(sample.image)}
    if sample.texts is not None:
        record["txt"] = "\n".join(sample.texts)  # true caption first, negative second
    else:
        record["cls"] = str(sample.label)
    if sample.texture_label is not None:
        record["texture_cls"] = str(sample.texture_label)
    return record


def write_test_set(out_dir: str, task: str, n: int, seed: int = 1) -> str:
    """Write ``n`` samples of ``task`` as the clip_benchmark dataset ``<out_dir>/<task>/``; returns that path.

    Load with ``build_dataset("wds/<task>", root=<path>, split="test")``; evaluate
    ``binding`` with ``--task image_caption_selection``. ``cue_conflict`` also gets
    ``texture_labels.txt`` (one texture class per line, in key order) and a
    ``texture_cls`` entry per sample; prefer the latter when reading with
    several DataLoader workers, which interleave the shards' batches.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    root = os.path.join(out_dir, task)
    texture_labels: list[int] = []

    def records() -> Iterator[Record]:
        for i, sample in enumerate(eval_samples(task, n, seed)):
            if sample.texture_label is not None:
                texture_labels.append(sample.texture_label)
            yield _test_record(i, sample)

    _write_shards(os.path.join(root, "test"), records(), n, desc=task)
    if task == "binding":
        _write_info(root, "retrieval", task=task, split="test", n=n, seed=seed)
        return root
    _write_info(root, "classification", task=task, split="test", n=n, seed=seed)
    _write_lines(os.path.join(root, "classnames.txt"), classnames(task))
    _write_lines(os.path.join(root, "zeroshot_classification_templates.txt"), TEMPLATES)
    if task == "cue_conflict":
        _write_lines(os.path.join(root, "texture_labels.txt"), texture_labels)
    return root


def write_all(out_dir: str, n_train: int, n_test: int, seed: int = 0, tasks: Sequence[str] = TASKS) -> dict[str, str]:
    """Training set (seed ``seed``) and each test set (seed ``seed + 1``); returns {"train" | task: path}.

    Test sets use ``seed + 1`` so that ``write_all(seed=0)`` matches the
    defaults of :func:`write_training_set` and :func:`write_test_set`.
    """
    paths = {"train": write_training_set(out_dir, n_train, seed)}
    for task in tasks:
        paths[task] = write_test_set(out_dir, task, n_test, seed + 1)
    return paths
