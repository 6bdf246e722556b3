"""Registry of model families: pipeline `_class_name` in `model_index.json` -> backend.

Lazy: a family's module (and the diffusers/transformers classes it uses) is imported only when a
checkpoint of that family is loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Type

if TYPE_CHECKING:
    from .base import DiffusionBackend

_SD = "stable_diffusion:StableDiffusionBackend"
#: pipeline `_class_name` -> "module:BackendClass" inside this package
BACKENDS: dict[str, str] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionImg2ImgPipeline": _SD,
    "StableDiffusionInpaintPipeline": _SD,
    "AltDiffusionPipeline": _SD,
    "StableDiffusionXLPipeline": "sdxl:StableDiffusionXLBackend",
    "StableDiffusionXLImg2ImgPipeline": "sdxl:StableDiffusionXLBackend",
    "StableDiffusion3Pipeline": "sd3:StableDiffusion3Backend",
    "StableDiffusion3Img2ImgPipeline": "sd3:StableDiffusion3Backend",
    "FluxPipeline": "flux:FluxBackend",
    "FluxImg2ImgPipeline": "flux:FluxBackend",
    "PixArtAlphaPipeline": "pixart:PixArtAlphaBackend",
    "PixArtSigmaPipeline": "pixart:PixArtSigmaBackend",
    "DiTPipeline": "dit:DiTBackend",
    "IFPipeline": "deepfloyd_if:IFBackend",
    "IFImg2ImgPipeline": "deepfloyd_if:IFBackend",
    "QwenImagePipeline": "qwenimage:QwenImageBackend",
    "QwenImageImg2ImgPipeline": "qwenimage:QwenImageBackend",
    "Flux2Pipeline": "flux2:Flux2Backend",
    "Flux2KleinPipeline": "flux2:Flux2KleinBackend",
    "ZImagePipeline": "z_image:ZImageBackend",
    "SanaPipeline": "sana:SanaBackend",
    "Lumina2Pipeline": "lumina2:Lumina2Backend",
    "Lumina2Text2ImgPipeline": "lumina2:Lumina2Backend",
    "HiDreamImagePipeline": "hidream:HiDreamBackend",
    "ChromaPipeline": "chroma:ChromaBackend",
    "ChromaImg2ImgPipeline": "chroma:ChromaBackend",
    "CogView4Pipeline": "cogview4:CogView4Backend",
    "HunyuanImagePipeline": "hunyuanimage:HunyuanImageBackend",
}


def backend_for_pipeline(class_name: str) -> "Type[DiffusionBackend]":
    """The backend class of a pipeline class name; KeyError if the family is not supported."""
    if class_name not in BACKENDS:
        raise KeyError(class_name)
    module_name, _, attribute = BACKENDS[class_name].partition(":")
    return getattr(importlib.import_module(f".{module_name}", __name__), attribute)


def __getattr__(name: str) -> Any:
    if name in ("DiffusionBackend", "Conditioning"):
        return getattr(importlib.import_module(".base", __name__), name)
    if name == "StableDiffusionBackend":
        return backend_for_pipeline("StableDiffusionPipeline")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DiffusionBackend", "Conditioning", "StableDiffusionBackend", "BACKENDS", "backend_for_pipeline"]
