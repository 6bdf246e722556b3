"""Registry of model families: pipeline class name in `model_index.json` -> backend class."""
from __future__ import annotations

from typing import Type

from .base import DiffusionBackend
from .stable_diffusion import PIPELINE_CLASSES as _SD_PIPELINES, REQUIRED_PARTS as _SD_PARTS, StableDiffusionBackend

#: pipeline `_class_name` -> (backend class, parts the folder must contain)
BACKENDS: dict[str, tuple[Type[DiffusionBackend], tuple[str, ...]]] = {
    name: (StableDiffusionBackend, _SD_PARTS) for name in _SD_PIPELINES
}


def backend_for_pipeline(class_name: str) -> tuple[Type[DiffusionBackend], tuple[str, ...]]:
    if class_name not in BACKENDS:
        raise KeyError(class_name)
    return BACKENDS[class_name]


__all__ = ["DiffusionBackend", "StableDiffusionBackend", "BACKENDS", "backend_for_pipeline"]
