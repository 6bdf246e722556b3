"""Cue-conflict stimuli as a clip_benchmark-style zero-shot classification dataset.

Two sources give the same three things (a torch Dataset of `(transformed image, shape label)`
with `.classes` and `.templates`, plus `.texture_labels` aligned with the samples), so one
shape-bias run serves both:

* the public stimuli of Geirhos et al. (github.com/rgeirhos/texture-vs-shape),
  `stimuli/style-transfer-preprocessed-512/<shape>/<shape><i>-<texture><j>.png`, over the 16
  ImageNet-derived classes; the classes are named directly in the prompts (zero-shot), instead
  of mapping 1000 ImageNet logits onto 16 classes as the original study did;
* the reference world's `cue_conflict` folder (`clip_benchmark_diffusion.world`), a wds
  folder whose samples carry `cls` (shape) and `texture_cls` (texture) entries.

Samples are held in memory as file paths or encoded bytes and decoded on access, so the
dataset is map-style: any DataLoader (workers, batch size) keeps the order of the labels.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from typing import Callable, Optional, Sequence, Union

from PIL import Image
from torch.utils.data import Dataset

#: the 16 classes of Geirhos et al., in label order (alphabetical, as their folders sort)
GEIRHOS_CLASSES: tuple[str, ...] = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat",
    "chair", "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck",
)
#: the first CLIP ImageNet template; one prompt per class keeps diffusion runs cheap
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.",)
GEIRHOS_SUBDIR = os.path.join("stimuli", "style-transfer-preprocessed-512")
LAYOUTS: tuple[str, ...] = ("geirhos", "world")

_STIMULUS_NAME = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)\.(png|jpe?g|webp)$", re.IGNORECASE)
_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")

ImageSource = Union[str, bytes]


class CueConflictDataset(Dataset):
    """`(transform(image), shape label)` per sample, with the texture label kept alongside."""

    def __init__(self, sources: Sequence[ImageSource], shape_labels: Sequence[int], texture_labels: Sequence[int],
                 classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                 transform: Optional[Callable] = None, names: Optional[Sequence[str]] = None) -> None:
        if not len(sources) == len(shape_labels) == len(texture_labels):
            raise ValueError("every sample needs an image, a shape label and a texture label")
        self.sources = list(sources)
        self.targets = [int(v) for v in shape_labels]
        self.texture_labels = [int(v) for v in texture_labels]
        self.classes = list(classes)
        self.templates = list(templates)
        self.transform = transform
        #: a readable id per sample (file path relative to the root, or the wds key)
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.sources))]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        source = self.sources[index]
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(handle) as opened:
            image = opened.convert("RGB")
        return (self.transform(image) if self.transform else image), self.targets[index]


def _geirhos_folder(root: str) -> str:
    """Accept the repository root, its `stimuli/` folder, or the folder of class folders."""
    for candidate in (os.path.join(root, GEIRHOS_SUBDIR), os.path.join(root, os.path.basename(GEIRHOS_SUBDIR))):
        if os.path.isdir(candidate):
            return candidate
    return root


def load_geirhos(root: str, transform: Optional[Callable] = None,
                 templates: Sequence[str] = DEFAULT_TEMPLATES) -> CueConflictDataset:
    """The public cue-conflict stimuli under `root` (any subset of the 16 class folders)."""
    folder = _geirhos_folder(root)
    index = {name: i for i, name in enumerate(GEIRHOS_CLASSES)}
    sources, shapes, textures, names = [], [], [], []
    for shape in sorted(os.listdir(folder)):
        class_dir = os.path.join(folder, shape)
        if not os.path.isdir(class_dir):
            continue
        if shape not in index:
            raise ValueError(f"{class_dir}: '{shape}' is not one of the 16 cue-conflict classes {GEIRHOS_CLASSES}")
        for file_name in sorted(os.listdir(class_dir)):
            match = _STIMULUS_NAME.match(file_name)
            if match is None:
                continue
            named_shape, texture = match.group(1).lower(), match.group(3).lower()
            if named_shape != shape or texture not in index:
                raise ValueError(f"{os.path.join(class_dir, file_name)}: expected '{shape}<i>-<texture><j>' with "
                                 f"a texture among the 16 classes")
            sources.append(os.path.join(class_dir, file_name))
            shapes.append(index[shape])
            textures.append(index[texture])
            names.append(f"{shape}/{file_name}")
    if not sources:
        raise FileNotFoundError(f"no '<shape>/<shape><i>-<texture><j>.png' stimuli under {folder}")
    return CueConflictDataset(sources, shapes, textures, GEIRHOS_CLASSES, templates, transform, names)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _wds_samples(split_dir: str) -> list[dict[str, bytes]]:
    """All samples of a wds split, in shard order, as {extension: bytes, "__key__": key}."""
    samples: dict[str, dict] = {}
    shards = int(_read_lines(os.path.join(split_dir, "nshards.txt"))[0])
    for shard in range(shards):
        with tarfile.open(os.path.join(split_dir, f"{shard}.tar")) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                key, _, extension = os.path.basename(member.name).partition(".")
                entry = samples.setdefault(f"{shard}/{key}", {"__key__": key})
                entry[extension.lower()] = tar.extractfile(member).read()
    return list(samples.values())


def load_world(root: str, transform: Optional[Callable] = None, split: str = "test",
               templates: Optional[Sequence[str]] = None) -> CueConflictDataset:
    """The reference world's `cue_conflict` wds folder (its own classes and templates by default)."""
    samples = _wds_samples(os.path.join(root, split))
    texture_file = os.path.join(root, "texture_labels.txt")
    fallback = [int(v) for v in _read_lines(texture_file)] if os.path.isfile(texture_file) else None
    sources, shapes, textures = [], [], []
    for i, sample in enumerate(samples):
        image = next((sample[e] for e in _IMAGE_EXTENSIONS if e in sample), None)
        if image is None or "cls" not in sample:
            raise ValueError(f"{root}: sample {sample['__key__']} has no image or no 'cls' label")
        if "texture_cls" in sample:
            textures.append(int(sample["texture_cls"]))
        elif fallback is not None and i < len(fallback):
            textures.append(fallback[i])
        else:
            raise ValueError(f"{root}: sample {sample['__key__']} has no texture label ('texture_cls' entry or "
                             f"line {i + 1} of texture_labels.txt)")
        sources.append(image)
        shapes.append(int(sample["cls"]))
    classes = _read_lines(os.path.join(root, "classnames.txt"))
    if templates is None:
        templates = _read_lines(os.path.join(root, "zeroshot_classification_templates.txt"))
    return CueConflictDataset(sources, shapes, textures, classes, templates, transform,
                              [sample["__key__"] for sample in samples])


def load_cue_conflict(layout: str, root: str, transform: Optional[Callable] = None,
                      templates: Optional[Sequence[str]] = None) -> CueConflictDataset:
    """`layout` "geirhos" (public stimuli) or "world" (reference world wds folder)."""
    if layout == "geirhos":
        return load_geirhos(root, transform, templates or DEFAULT_TEMPLATES)
    if layout == "world":
        return load_world(root, transform, templates=templates)
    raise ValueError(f"unknown cue-conflict layout {layout!r}; expected one of {LAYOUTS}")
