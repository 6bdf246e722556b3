"""Your own images as a clip_benchmark dataset, and dataset mistakes caught before a model loads.

    python -m clip_benchmark_diffusion folder-to-wds SRC DST [--template "a photo of a {c}."] ...

turns a folder of class subfolders (SRC/cat/*.jpg, SRC/dog/*.png, ...) into clip_benchmark's
webdataset layout (what `build_wds_dataset` in clip_benchmark/datasets/builder.py reads):

    DST/
        test/0.tar ... test/{n-1}.tar     samples: __key__, one image (jpg/png/webp as found), "cls"
        test/nshards.txt                  n
        classnames.txt                    one class name per line, in label order
        zeroshot_classification_templates.txt   one prompt per line, "{c}" = the class name

which any model then runs with `--dataset wds/NAME --dataset_root DST` (NAME names the output
files only). Labels follow the sorted subfolder names (as torchvision's ImageFolder); class
names are the folder names with `_` shown as a space, or `--classnames FILE`.

`check_datasets` is called by the registration before any model loads: an unknown dataset
name, a `wds/` dataset without its files, or a missing `--dataset_root` for a diffusion run is
one line instead of a traceback after minutes of model loading.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import io
import os
import re
import sys
import tarfile
from typing import Iterable, Optional, Sequence

from .errors import DatasetError  # noqa: F401 (re-exported: its old home)

#: image formats clip_benchmark's wds loader decodes (anything else is converted to png)
WDS_IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
#: what the converter reads
READABLE_EXTENSIONS = WDS_IMAGE_EXTENSIONS + ("bmp", "gif", "tif", "tiff", "ppm", "pgm")
DEFAULT_TEMPLATES = ("a photo of a {c}.",)
#: clip_benchmark's default --dataset_root ("root"): an unchanged value means the flag was not given
CLIP_BENCHMARK_DEFAULT_ROOT = "root"


# --------------------------------------------------------------------------- folder -> wds
def class_folders(source: str) -> list[str]:
    """The class subfolders of `source`, sorted (their index is the label)."""
    if not os.path.isdir(source):
        raise DatasetError(f"{source}: no such folder (expected one subfolder of images per class)")
    names = sorted(entry.name for entry in os.scandir(source) if entry.is_dir() and not entry.name.startswith("."))
    if len(names) < 2:
        raise DatasetError(f"{source}: found {len(names)} class subfolder(s); a classification dataset needs at "
                           "least two (SRC/cat/*.jpg, SRC/dog/*.jpg, ...)")
    return names


def _images_in(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower().lstrip(".") in READABLE_EXTENSIONS]
    return found


def image_bytes(path: str) -> tuple[str, bytes]:
    """(wds extension, bytes): the file's own bytes when clip_benchmark decodes its format, else png."""
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension in WDS_IMAGE_EXTENSIONS:
        with open(path, "rb") as handle:
            return ("jpg" if extension == "jpeg" else extension), handle.read()
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="PNG")
    return "png", buffer.getvalue()


def tar_add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    """One member; fixed timestamps make identical input give identical tar files."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    archive.addfile(info, io.BytesIO(data))


def folder_to_wds(source: str, destination: str, split: str = "test", templates: Sequence[str] = DEFAULT_TEMPLATES,
                  classnames: Optional[Sequence[str]] = None, shard_size: int = 5000, limit_per_class: int = 0,
                  overwrite: bool = False) -> dict:
    """Write `source`'s class subfolders as a clip_benchmark wds dataset in `destination`.
    Returns {"classes", "images", "shards", "per_class"}."""
    folders = class_folders(source)
    if classnames is not None and len(classnames) != len(folders):
        raise DatasetError(f"{len(classnames)} class names for {len(folders)} class subfolders ({', '.join(folders)})")
    names = list(classnames) if classnames is not None else [f.replace("_", " ") for f in folders]
    templates = [t for t in templates if t.strip()]
    if not templates or any("{c}" not in t for t in templates):
        raise DatasetError("every template needs '{c}' where the class name goes, e.g. 'a photo of a {c}.'")
    if shard_size < 1:
        raise DatasetError(f"--shard-size must be >= 1, got {shard_size}")
    split_folder = os.path.join(destination, split)
    if os.path.isfile(os.path.join(split_folder, "nshards.txt")) and not overwrite:
        raise DatasetError(f"{split_folder} already holds a dataset; pass --overwrite to replace it")
    samples = []
    per_class = {}
    for label, folder in enumerate(folders):
        images = _images_in(os.path.join(source, folder))
        if limit_per_class:
            images = images[:limit_per_class]
        per_class[names[label]] = len(images)
        samples += [(path, label) for path in images]
    empty = [name for name, count in per_class.items() if count == 0]
    if empty:
        raise DatasetError(f"no images ({', '.join(READABLE_EXTENSIONS)}) in the class folder(s) "
                           f"{', '.join(empty)} of {source}")
    os.makedirs(split_folder, exist_ok=True)
    for stale in os.listdir(split_folder):
        if re.fullmatch(r"\d+\.tar", stale):
            os.remove(os.path.join(split_folder, stale))
    shards = (len(samples) + shard_size - 1) // shard_size
    for shard in range(shards):
        with tarfile.open(os.path.join(split_folder, f"{shard}.tar"), "w") as archive:
            for index in range(shard * shard_size, min(len(samples), (shard + 1) * shard_size)):
                path, label = samples[index]
                extension, data = image_bytes(path)
                key = f"s{index:07d}"
                tar_add(archive, f"{key}.{extension}", data)
                tar_add(archive, f"{key}.cls", str(label).encode())
    _write_lines(os.path.join(split_folder, "nshards.txt"), [str(shards)])
    _write_lines(os.path.join(destination, "classnames.txt"), names)
    _write_lines(os.path.join(destination, "zeroshot_classification_templates.txt"), templates)
    return {"classes": names, "images": len(samples), "shards": shards, "per_class": per_class}


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def folder_to_wds_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clip_benchmark_diffusion folder-to-wds", allow_abbrev=False,
        description="Turn a folder of class subfolders (SRC/cat/*.jpg, SRC/dog/*.png, ...) into clip_benchmark's "
                    "webdataset layout, for `clip_benchmark eval --dataset wds/NAME --dataset_root DST`.")
    parser.add_argument("source", metavar="SRC", help="folder with one subfolder of images per class")
    parser.add_argument("destination", metavar="DST", help="output folder (the --dataset_root of the eval)")
    parser.add_argument("--split", default="test", help="split folder to write (default: test, clip_benchmark's "
                                                        "default --split)")
    parser.add_argument("--template", action="append", dest="templates", metavar="TEXT",
                        help="a prompt with {c} for the class name; repeat for several (default: "
                             f"{DEFAULT_TEMPLATES[0]!r})")
    parser.add_argument("--classnames", metavar="FILE", help="class names, one per line in sorted-subfolder order "
                                                             "(default: the subfolder names, '_' as a space)")
    parser.add_argument("--shard-size", type=int, default=5000, help="images per .tar shard (default: 5000)")
    parser.add_argument("--limit-per-class", type=int, default=0, metavar="N",
                        help="take only the first N images (sorted by path) of each class (default: 0 = all)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in DST")
    args = parser.parse_args(argv)
    try:
        classnames = None
        if args.classnames:
            with open(args.classnames, encoding="utf-8") as handle:
                classnames = [line.strip() for line in handle if line.strip()]
        summary = folder_to_wds(args.source, args.destination, split=args.split,
                                templates=args.templates or DEFAULT_TEMPLATES, classnames=classnames,
                                shard_size=args.shard_size, limit_per_class=args.limit_per_class,
                                overwrite=args.overwrite)
    except (DatasetError, OSError) as error:
        print(f"folder-to-wds: error: {error}", file=sys.stderr)
        return 2
    name = os.path.basename(os.path.normpath(args.destination)) or "mydata"
    counts = ", ".join(f"{c} {n}" for c, n in summary["per_class"].items())
    print(f"wrote {summary['images']} images of {len(summary['classes'])} classes ({counts}) in "
          f"{summary['shards']} shard(s) to {args.destination}")
    print(f"run: clip_benchmark eval --model sd-diffusion --pretrained CHECKPOINT --dataset wds/{name} "
          f"--dataset_root {args.destination}" + ("" if args.split == "test" else f" --split {args.split}"))
    return 0


# --------------------------------------------------------------------------- checks before loading
def wds_shard_count(root: str, split: str) -> Optional[int]:
    """nshards.txt of a local wds dataset (None: remote or unreadable)."""
    if "://" in root:
        return None
    try:
        with open(os.path.join(root, split, "nshards.txt")) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def wds_sample_count(root: str, split: str) -> Optional[int]:
    """Images in a local wds split, from the shards' tar headers (no image is read); None if unknown."""
    shards = wds_shard_count(root, split)
    if not shards:
        return None
    keys = set()
    try:
        for shard in range(shards):
            with tarfile.open(os.path.join(root, split, f"{shard}.tar")) as archive:
                for member in archive:
                    stem, _, extension = member.name.rpartition(".")
                    if extension.lower() in WDS_IMAGE_EXTENSIONS:
                        keys.add((shard, stem))
    except (OSError, tarfile.TarError):
        return None
    return len(keys)


def known_dataset_names() -> tuple[set[str], tuple[str, ...]]:
    """(exact names, name prefixes) clip_benchmark's `build_dataset` accepts, read from its source;
    (empty, empty) if that source cannot be read (then no name is refused)."""
    try:
        from clip_benchmark.datasets import builder

        source = inspect.getsource(builder.build_dataset)
    except (ImportError, OSError, TypeError, AttributeError):
        return set(), ()
    names = set(re.findall(r"dataset_name\s*==\s*['\"]([^'\"]+)['\"]", source))
    prefixes = tuple(re.findall(r"dataset_name\.startswith\(\s*['\"]([^'\"]+)['\"]\s*\)", source))
    return names, prefixes


def expand_dataset_arguments(datasets: Sequence[str]) -> list[str]:
    """`--dataset` values as clip_benchmark's main_eval expands them (files, collections, names)."""
    try:
        from clip_benchmark.datasets.builder import dataset_collection, get_dataset_collection_from_file
    except ImportError:
        return list(datasets)
    expanded = []
    for name in datasets:
        if os.path.isfile(name):
            expanded.extend(get_dataset_collection_from_file(name))
        elif name in dataset_collection:
            expanded.extend(dataset_collection[name])
        else:
            expanded.append(name)
    return expanded


def check_dataset(name: str, root_template: str, split: str, root_given: bool, strict_root: bool,
                  task: str = "auto") -> None:
    """Raise DatasetError (one line) for a dataset clip_benchmark would fail on after loading the model.
    `strict_root`: also refuse a missing --dataset_root for downloadable datasets (diffusion runs:
    clip_benchmark would otherwise create ./root and try to download there)."""
    if os.path.isdir(name) and not name.startswith("wds/"):
        raise DatasetError(f"--dataset {name} is a folder: clip_benchmark takes a dataset name. For a folder of "
                           f"class subfolders run `python -m clip_benchmark_diffusion folder-to-wds {name} DST`, then "
                           f"--dataset wds/{os.path.basename(os.path.normpath(name))} --dataset_root DST")
    short = name.replace("wds/", "", 1) if name.startswith("wds/") else name
    root = root_template.format(dataset=short, dataset_cleaned=short.replace("/", "-"))
    if name.startswith("wds/"):
        if "://" in root:
            return
        where = f"--dataset_root {root}" if root_given else "no --dataset_root given"
        nshards = os.path.join(root, split, "nshards.txt")
        if not os.path.isfile(nshards):
            hint = ("pass --dataset_root DIR, the folder holding test/nshards.txt, classnames.txt and the shards"
                    if not root_given else
                    f"expected {nshards} (clip_benchmark's webdataset layout; `python -m clip_benchmark_diffusion "
                    "folder-to-wds SRC DST` writes it from a folder of class subfolders)")
            raise DatasetError(f"--dataset {name}: {where}: no {split}/nshards.txt there; {hint}")
        needs_classes = task in ("auto", "zeroshot_classification", "linear_probe")
        type_file = os.path.join(root, "dataset_type.txt")
        dataset_type = open(type_file).read().strip().lower() if os.path.isfile(type_file) else "classification"
        if needs_classes and dataset_type == "classification":
            for required in ("classnames.txt", "zeroshot_classification_templates.txt"):
                if not os.path.isfile(os.path.join(root, required)):
                    raise DatasetError(f"--dataset {name}: {root} has no {required}, which zero-shot "
                                       "classification needs (one line per class / per prompt with {c})")
        return
    names, prefixes = known_dataset_names()
    if names and name not in names and not name.startswith(prefixes):
        close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.6)
        suggestion = f"; did you mean {' or '.join(close)}?" if close else ""
        raise DatasetError(f"--dataset {name}: clip_benchmark has no such dataset{suggestion} (your own images: "
                           "--dataset wds/NAME --dataset_root DIR, see `python -m clip_benchmark_diffusion "
                           "folder-to-wds --help`)")
    if strict_root and not root_given and not os.path.isdir(root):
        raise DatasetError(f"--dataset {name}: no --dataset_root given, so clip_benchmark would create ./{root} and "
                           "download the dataset there; pass --dataset_root DIR (the folder that holds it, or where to "
                           "download it)")


def dataset_root_given(argv: Sequence[str]) -> bool:
    """Whether the command line sets --dataset_root (argparse also takes unambiguous prefixes)."""
    flags = (arg.split("=", 1)[0] for arg in argv)
    return any(len(flag) >= len("--dataset_r") and "--dataset_root".startswith(flag) for flag in flags)
