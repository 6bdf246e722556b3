"""Seeded sampling of scenes, their captions, and the per-task sample streams.

Every sample gets its own RNG derived from ``(seed, stream, index)``, so sample
``i`` is identical whatever ``n`` is and whichever other samples are drawn.

Caption convention (shared with the zero-shot templates, so class prompts are
in-distribution for models trained on the training captions): lower case, no
trailing period, article always "a" (also "a orange ...", because the template
``"a {c}"`` is filled with every class name alike), left object first:
``"a red circle"``, ``"a circle"``, ``"a red object"``,
``"a red circle and a blue square"``, ``"a circle and a square"``,
``"a red object and a blue object"``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .render import COLOUR_RGB, COLOURS, IMAGE_SIZE, SHAPES, TEXTURES, TYPICAL_TEXTURE, ObjectSpec, Scene, render

TASKS: tuple[str, ...] = ("shape", "colour", "colour_shape", "binding", "cue_conflict")
TEMPLATES: tuple[str, ...] = ("a {c}",)

# Training mixture: single objects, two-object scenes, textured single objects.
_KIND_PROBS = {"single": 0.60, "pair": 0.25, "textured": 0.15}
_PARTIAL_CAPTION_PROB = 0.30
_TYPICAL_TEXTURE_PROB = 0.90
_COLOUR_JITTER = 12
# Object side as a fraction of its region (whole image, or one half for pairs).
_SINGLE_SIZE = (0.40, 0.80)
_TEXTURED_SIZE = (0.55, 0.80)  # larger, so that 2-4 texture periods are visible
_PAIR_SIZE = (0.65, 0.95)


@dataclass(frozen=True)
class TrainingSample:
    """A rendered training scene and its caption; the scene is kept so captions can be checked against it."""

    image: Image.Image
    scene: Scene
    caption: str


def sample_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Independent RNG for sample ``index`` of ``stream`` (e.g. "train", "shape"), from ``seed``."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.default_rng([seed, zlib.crc32(stream.encode("utf-8")), index])


def phrase(shape: str | None, colour: str | None) -> str:
    """Noun phrase without article: "red circle", "circle" or "red object"."""
    if shape is None and colour is None:
        raise ValueError("a phrase needs a shape or a colour")
    return f"{colour} {shape or 'object'}" if colour else str(shape)


def describe(objects: Sequence[ObjectSpec], with_shape: bool = True, with_colour: bool = True) -> str:
    """Caption naming the objects left to right, e.g. "a red circle and a blue square"."""
    return " and ".join(
        "a " + phrase(o.shape if with_shape else None, o.colour if with_colour else None) for o in objects
    )


def classnames(task: str) -> list[str]:
    """Class names of a classification task, in label order (``binding`` has none)."""
    if task in ("shape", "cue_conflict"):
        return list(SHAPES)
    if task == "colour":
        return [phrase(None, c) for c in COLOURS]
    if task == "colour_shape":
        return [phrase(s, c) for c in COLOURS for s in SHAPES]
    if task == "binding":
        raise ValueError("binding is a caption-selection task and has no class names")
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _jittered(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(COLOUR_RGB[colour]) + jitter, 0, 255))  # type: ignore[return-value]


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    """Light/grey tone with a faint tint: low saturation keeps it far from every object colour."""
    grey = int(rng.integers(150, 236))
    tint = rng.integers(-8, 9, size=3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))  # type: ignore[return-value]


def _object(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    region: tuple[float, float],
    size_range: tuple[float, float],
    texture: str | None = None,
) -> ObjectSpec:
    """Object of random size and position inside the horizontal band ``region`` = (x0, width)."""
    x0, width = region
    side = float(rng.uniform(*size_range)) * width
    x = x0 + float(rng.uniform(0.5, max(0.5, width - side - 0.5)))
    y = float(rng.uniform(0.5, max(0.5, IMAGE_SIZE - side - 0.5)))
    return ObjectSpec(shape, colour, _jittered(rng, colour), (x, y, side), texture, int(rng.integers(2**31)))


def _scene(rng: np.random.Generator, objects: Sequence[ObjectSpec]) -> Scene:
    return Scene(_background(rng), int(rng.integers(2**31)), tuple(objects))


def single_scene(rng: np.random.Generator, shape: str, colour: str, texture: str | None = None) -> Scene:
    """One object filling roughly 40-80% of the image side (55-80% when textured)."""
    size = _TEXTURED_SIZE if texture else _SINGLE_SIZE
    return _scene(rng, [_object(rng, shape, colour, (0.0, IMAGE_SIZE), size, texture)])


def _pick(rng: np.random.Generator, options: Sequence[str], k: int = 1) -> list[str]:
    """``k`` distinct random choices (as plain str, not numpy str)."""
    return [options[int(i)] for i in rng.choice(len(options), size=k, replace=False)]


def pair_scene(rng: np.random.Generator) -> Scene:
    """Two objects of different shapes and colours, one in the left half and one in the right half."""
    half = IMAGE_SIZE / 2
    shapes, colours = _pick(rng, SHAPES, 2), _pick(rng, COLOURS, 2)
    objects = [_object(rng, s, c, (i * half, half), _PAIR_SIZE) for i, (s, c) in enumerate(zip(shapes, colours))]
    return _scene(rng, objects)


def _training_caption(rng: np.random.Generator, scene: Scene) -> str:
    """Full caption most of the time; otherwise shape-only or colour-only (equally likely)."""
    if rng.random() >= _PARTIAL_CAPTION_PROB:
        return describe(scene.objects)
    shape_only = bool(rng.random() < 0.5)
    return describe(scene.objects, with_shape=shape_only, with_colour=not shape_only)


def training_sample(index: int, seed: int = 0) -> TrainingSample:
    """Training sample ``index``: single (~60%), two-object (~25%) or textured single object (~15%)."""
    rng = sample_rng(seed, "train", index)
    kind = str(rng.choice(list(_KIND_PROBS), p=list(_KIND_PROBS.values())))
    if kind == "pair":
        scene = pair_scene(rng)
    else:
        shape, colour = _pick(rng, SHAPES)[0], _pick(rng, COLOURS)[0]
        texture = None
        if kind == "textured":
            atypical = [t for t in TEXTURES if t != TYPICAL_TEXTURE[shape]]
            texture = TYPICAL_TEXTURE[shape] if rng.random() < _TYPICAL_TEXTURE_PROB else _pick(rng, atypical)[0]
        scene = single_scene(rng, shape, colour, texture)
    return TrainingSample(render(scene), scene, _training_caption(rng, scene))


def training_samples(n: int, seed: int = 0) -> Iterator[tuple[Image.Image, str]]:
    """n (image, caption) pairs: a mix of single objects (~60%), two-object scenes (~25%)
    and textured single objects (~15%)."""
    for i in range(n):
        sample = training_sample(i, seed)
        yield sample.image, sample.caption


def swap_colours(scene: Scene) -> list[ObjectSpec]:
    """The two objects of a pair scene with their colour names exchanged (for the binding negative)."""
    left, right = scene.objects
    return [replace(left, colour=right.colour), replace(right, colour=left.colour)]


@dataclass(frozen=True)
class EvalSample:
    """A test sample: ``label`` for classification tasks, ``texts`` for binding, ``texture_label`` for cue conflict."""

    image: Image.Image
    scene: Scene
    label: int | None = None
    texts: tuple[str, ...] | None = None
    texture_label: int | None = None


def eval_sample(task: str, index: int, seed: int = 1) -> EvalSample:
    """Sample ``index`` of a test task; labels cycle over classes so any prefix is (nearly) balanced."""
    rng = sample_rng(seed, task, index)
    k = len(SHAPES)
    if task == "binding":
        scene = pair_scene(rng)
        return EvalSample(render(scene), scene, texts=(describe(scene.objects), describe(swap_colours(scene))))
    if task == "cue_conflict":
        # index enumerates all 30 (shape, other shape's texture) pairs in turn.
        shape = index % k
        texture = (shape + 1 + (index // k) % (k - 1)) % k
        scene = single_scene(rng, SHAPES[shape], _pick(rng, COLOURS)[0], TEXTURES[texture])
        return EvalSample(render(scene), scene, label=shape, texture_label=texture)
    label = index % len(classnames(task))
    if task == "shape":
        shape, colour = SHAPES[label], _pick(rng, COLOURS)[0]
    elif task == "colour":
        shape, colour = _pick(rng, SHAPES)[0], COLOURS[label]
    else:  # colour_shape: label = colour_index * 6 + shape_index, matching classnames()
        shape, colour = SHAPES[label % k], COLOURS[label // k]
    scene = single_scene(rng, shape, colour)
    return EvalSample(render(scene), scene, label=label)


def eval_samples(task: str, n: int, seed: int = 1) -> Iterator[EvalSample]:
    """The first ``n`` samples of a test task."""
    return (eval_sample(task, i, seed) for i in range(n))


def binding_samples(n: int, seed: int = 1) -> Iterator[tuple[Image.Image, list[str]]]:
    """n (image, [true caption, colour-swapped negative]) pairs of two-object scenes."""
    for sample in eval_samples("binding", n, seed):
        yield sample.image, list(sample.texts or ())


def classification_samples(task: str, n: int, seed: int = 1) -> Iterator[tuple[Image.Image, int]]:
    """n (image, label) pairs of a classification task (for cue_conflict the label is the true shape)."""
    if task == "binding":
        raise ValueError("binding is not a classification task; use binding_samples")
    for sample in eval_samples(task, n, seed):
        yield sample.image, int(sample.label)  # type: ignore[arg-type]


def cue_conflict_samples(n: int, seed: int = 1) -> Iterator[tuple[Image.Image, int, int]]:
    """n (image, shape label, texture label) triples; the texture label is the shape whose typical texture is shown."""
    for sample in eval_samples("cue_conflict", n, seed):
        yield sample.image, int(sample.label), int(sample.texture_label)  # type: ignore[arg-type]
