"""Reference models of the synthetic world, trained by scripts in this folder and shipped as small weights.

* `REFERENCE_SD_DIR`: a tiny Stable Diffusion pipeline folder (diffusers layout), trained by
  `python -m clip_benchmark_diffusion.reference.train_diffusion`;
* `REFERENCE_FLOW_DIR`: a tiny Stable Diffusion 3 folder (MMDiT, rectified flow), trained by
  `python -m clip_benchmark_diffusion.reference.train_flow`;
* `REFERENCE_CLIP_FILE`: a tiny open_clip model (safetensors + `ref-world-clip.json` config),
  trained by `python -m clip_benchmark_diffusion.reference.train_clip`; call
  `register_reference_clip()` before `open_clip.create_model_and_transforms("ref-world-clip", ...)`.

Importing this module is cheap (no torch): the package registration imports it at start-up.
"""
from __future__ import annotations

import os

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
#: diffusers `StableDiffusionPipeline` folder of the reference diffusion model
REFERENCE_SD_DIR = os.path.join(WEIGHTS_DIR, "ref-world-sd")
#: diffusers `StableDiffusion3Pipeline` folder of the flow-matching reference model
REFERENCE_FLOW_DIR = os.path.join(WEIGHTS_DIR, "ref-world-flow")
#: open_clip model name of the reference CLIP (the stem of its config file)
REFERENCE_CLIP_MODEL = "ref-world-clip"
#: state dict (float16 safetensors) of the reference CLIP
REFERENCE_CLIP_FILE = os.path.join(WEIGHTS_DIR, REFERENCE_CLIP_MODEL + ".safetensors")
#: open_clip model config of the reference CLIP
REFERENCE_CLIP_CONFIG = os.path.join(WEIGHTS_DIR, REFERENCE_CLIP_MODEL + ".json")
#: short `pretrained=` tag for the shipped CLIP weights
REFERENCE_PRETRAINED_TAG = "ref-world"


def register_reference_clip() -> None:
    """Make `open_clip` know the reference CLIP, offline; safe to call any number of times.

    Afterwards `open_clip.create_model_and_transforms("ref-world-clip", pretrained=PATH)`
    works for any weights file of that architecture, `pretrained="ref-world"` means the shipped
    weights, and `open_clip.get_tokenizer("ref-world-clip")` is CLIP's BPE tokenizer with a
    16-token context. Does nothing if the shipped config is missing.
    """
    if not os.path.isfile(REFERENCE_CLIP_CONFIG):
        return
    import open_clip
    from open_clip import pretrained as open_clip_pretrained

    if REFERENCE_CLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(REFERENCE_CLIP_CONFIG)  # registered under the file's stem
    # open_clip has no public API for new pretrained tags; its tag table maps a cleaned tag
    # (lower case, "-" -> "_") to a config whose "file" entry is used as a local checkpoint.
    tags = open_clip_pretrained._PRETRAINED.setdefault(REFERENCE_CLIP_MODEL, {})
    tags.setdefault(REFERENCE_PRETRAINED_TAG.lower().replace("-", "_"), {
        "file": REFERENCE_CLIP_FILE,
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    })


__all__ = [
    "REFERENCE_CLIP_CONFIG", "REFERENCE_CLIP_FILE", "REFERENCE_CLIP_MODEL", "REFERENCE_PRETRAINED_TAG",
    "REFERENCE_FLOW_DIR", "REFERENCE_SD_DIR", "WEIGHTS_DIR", "register_reference_clip",
]
