"""Attribute binding (RQ4) as binary caption-selection tasks on two-object CLEVR-style renders.

Following Clark & Jaini (2023), every image shows two objects and is paired with its true
caption "a {size} {color} {shape} and a {size} {color} {shape}" and one negative:

* `binding_<attribute>`: the two objects' values of the attribute are swapped, so the
  negative mentions exactly the same words; only a model that binds attributes to objects
  can tell them apart. Images where the swap describes the same pair of objects (the objects
  differ in that attribute alone, or not at all) are skipped.
* `recognition_<attribute>` (control): one object's value is replaced by a value that
  neither object has, so recognising the words suffices.

Accepted annotations (`read_scenes`), with image paths relative to the render folder or its
`images/` subfolder; scenes with other than two objects are skipped:

* JSON: CLEVR's own `CLEVR_<split>_scenes.json` (`{"scenes": [...]}`), `{"images": [...]}`
  or a bare list, each entry
  `{"image_filename" | "file" | "image": "0001.png",
    "objects": [{"size": "large", "color": "red", "shape": "cube", ...}, {...}]}`
  (other object keys such as CLEVR's `material` are ignored; `colour` is accepted for `color`);
* CSV with a header row: `image,size1,color1,shape1,size2,color2,shape2`.
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Optional, Sequence

from .caption_selection import CaptionSample, write_caption_selection_wds

ATTRIBUTES: tuple[str, ...] = ("size", "color", "shape")
ANNOTATION_FILES: tuple[str, ...] = ("scenes.json", "attributes.json", "attributes.csv")
_IMAGE_KEYS = ("image_filename", "file", "image")
#: dataset-collection file written beside the task folders (`clip_benchmark eval --dataset <file>`)
SUITE_FILE = "binding_suite.txt"


@dataclass(frozen=True)
class SceneObject:
    size: str
    color: str
    shape: str

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class BindingScene:
    """An image file and its two objects, in the order the captions name them."""

    image: str
    objects: tuple[SceneObject, SceneObject]


def caption(objects: Sequence[SceneObject]) -> str:
    """'a large red cube and a small blue sphere'."""
    return " and ".join(obj.phrase() for obj in objects)


def _same_pair(a: Sequence[SceneObject], b: Sequence[SceneObject]) -> bool:
    """Captions name objects without positions, so object order does not matter."""
    return sorted(map(repr, a)) == sorted(map(repr, b))


def swap_attribute(objects: Sequence[SceneObject], attribute: str) -> Optional[tuple[SceneObject, SceneObject]]:
    """The two objects with `attribute` exchanged, or None when that describes the same pair."""
    first, second = objects
    swapped = (replace(first, **{attribute: getattr(second, attribute)}),
               replace(second, **{attribute: getattr(first, attribute)}))
    return None if _same_pair(swapped, objects) else swapped


def replace_attribute(objects: Sequence[SceneObject], attribute: str, which: int,
                      value: str) -> tuple[SceneObject, SceneObject]:
    """The objects with object `which`'s `attribute` set to `value` (a recognition negative)."""
    changed = list(objects)
    changed[which] = replace(changed[which], **{attribute: value})
    return tuple(changed)  # type: ignore[return-value]


# --------------------------------------------------------------------------- reading renders
def _object(entry: Mapping[str, Any]) -> SceneObject:
    color = entry.get("color", entry.get("colour"))
    if color is None or "size" not in entry or "shape" not in entry:
        raise ValueError(f"object {dict(entry)} needs 'size', 'color' and 'shape'")
    return SceneObject(str(entry["size"]), str(color), str(entry["shape"]))


def _json_entries(path: str) -> Iterable[tuple[str, list[SceneObject]]]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    entries = data if isinstance(data, list) else data.get("scenes", data.get("images"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list, or an object with a 'scenes' or 'images' list")
    for entry in entries:
        image = next((entry[key] for key in _IMAGE_KEYS if key in entry), None)
        if image is None:
            raise ValueError(f"{path}: entry without an image name ({' / '.join(_IMAGE_KEYS)}): {entry}")
        yield str(image), [_object(obj) for obj in entry.get("objects", [])]


def _csv_entries(path: str) -> Iterable[tuple[str, list[SceneObject]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            yield row["image"], [SceneObject(row[f"size{i}"], row[f"color{i}"], row[f"shape{i}"]) for i in (1, 2)]


def _find_annotations(root: str) -> str:
    for name in ANNOTATION_FILES:
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    found = [f for f in sorted(os.listdir(root)) if f.endswith((".json", ".csv"))]
    if len(found) == 1:
        return os.path.join(root, found[0])
    raise FileNotFoundError(f"{root}: pass the annotation file explicitly (found {found or 'none'}; "
                            f"looked for {', '.join(ANNOTATION_FILES)})")


def _image_path(root: str, name: str) -> str:
    for candidate in (os.path.join(root, name), os.path.join(root, "images", name)):  # absolute names stay
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"image '{name}' not found under {root} or {os.path.join(root, 'images')}")


def read_scenes(root: str, annotations: Optional[str] = None) -> list[BindingScene]:
    """Two-object scenes of a render folder (format in the module docstring)."""
    path = annotations or _find_annotations(root)
    entries = _csv_entries(path) if path.endswith(".csv") else _json_entries(path)
    return [BindingScene(_image_path(root, image), (objects[0], objects[1]))
            for image, objects in entries if len(objects) == 2]


# --------------------------------------------------------------------------- tasks
def vocabulary_of(scenes: Sequence[BindingScene]) -> dict[str, list[str]]:
    """Every value each attribute takes in `scenes` (the pool for recognition negatives)."""
    return {a: sorted({getattr(obj, a) for scene in scenes for obj in scene.objects}) for a in ATTRIBUTES}


def _recognition_negative(scene: BindingScene, attribute: str, pool: Sequence[str],
                          rng: random.Random) -> Optional[tuple[SceneObject, SceneObject]]:
    present = {getattr(obj, attribute) for obj in scene.objects}
    absent = [value for value in pool if value not in present]
    if not absent:
        return None
    return replace_attribute(scene.objects, attribute, rng.randrange(2), rng.choice(absent))


def binding_tasks(scenes: Sequence[BindingScene], attributes: Sequence[str] = ATTRIBUTES, controls: bool = True,
                  vocabulary: Optional[Mapping[str, Sequence[str]]] = None,
                  seed: int = 0) -> dict[str, list[CaptionSample]]:
    """{"binding_<a>": samples, "recognition_<a>": samples} with (true, negative) captions.

    Recognition negatives draw an absent value from `vocabulary` (default: the values seen
    in `scenes`), seeded per (seed, attribute, image index) so every image's negative is
    fixed whatever else is generated.
    """
    unknown = set(attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {ATTRIBUTES}")
    pools = dict(vocabulary) if vocabulary is not None else vocabulary_of(scenes)
    tasks: dict[str, list[CaptionSample]] = {}
    for attribute in attributes:
        tasks[f"binding_{attribute}"] = [
            CaptionSample(scene.image, (caption(scene.objects), caption(negative)))
            for scene in scenes if (negative := swap_attribute(scene.objects, attribute)) is not None]
        if controls:
            tasks[f"recognition_{attribute}"] = [
                CaptionSample(scene.image, (caption(scene.objects), caption(negative)))
                for index, scene in enumerate(scenes)
                if (negative := _recognition_negative(scene, attribute, pools[attribute],
                                                      random.Random(f"{seed}:{attribute}:{index}"))) is not None]
    return tasks


def write_binding_suite(scenes: Sequence[BindingScene], out_dir: str, attributes: Sequence[str] = ATTRIBUTES,
                        controls: bool = True, seed: int = 0) -> dict[str, str]:
    """Write each non-empty task as `<out_dir>/<task>/` (wds) plus `<out_dir>/binding_suite.txt`
    listing them as `wds/<task>`; returns {task: folder}."""
    tasks = binding_tasks(scenes, attributes, controls, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    folders = {name: write_caption_selection_wds(samples, os.path.join(out_dir, name))
               for name, samples in tasks.items() if samples}
    with open(os.path.join(out_dir, SUITE_FILE), "w", encoding="utf-8") as handle:
        handle.writelines(f"wds/{name}\n" for name in folders)
    return folders
