"""A deterministic procedural "reference world" of 32x32 coloured shapes.

It provides a captioned training set and small zero-shot test sets (shape,
colour, colour+shape, attribute binding, shape-vs-texture cue conflict) in
clip_benchmark's ``wds/`` format, so that models trained on the world can be
evaluated with known ground truth. See ``scenes.py`` for the caption
convention, ``writer.py`` for the on-disk layout and ``corruptions.py`` for world-C
(the test sets after ImageNet-C-style corruptions).
"""

from .render import COLOUR_RGB, COLOURS, IMAGE_SIZE, SHAPES, TEXTURES, TYPICAL_TEXTURE, ObjectSpec, Scene, render
from .scenes import (
    TASKS,
    TEMPLATES,
    binding_samples,
    classification_samples,
    classnames,
    cue_conflict_samples,
    describe,
    training_samples,
)
from .writer import write_all, write_test_set, write_training_set

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "IMAGE_SIZE",
    "SHAPES",
    "TASKS",
    "TEMPLATES",
    "TEXTURES",
    "TYPICAL_TEXTURE",
    "ObjectSpec",
    "Scene",
    "binding_samples",
    "classification_samples",
    "classnames",
    "cue_conflict_samples",
    "describe",
    "render",
    "training_samples",
    "write_all",
    "write_test_set",
    "write_training_set",
]
