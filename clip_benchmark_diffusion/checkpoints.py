"""`--pretrained` names -> diffusers checkpoints, with one clear error when weights are missing.

A name is a short alias (table below), a local diffusers folder, or a Hugging Face hub id.
Everything is checked *before* a dataset is touched, so a missing checkpoint fails in
seconds rather than at the end of a long run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from .backends import BACKENDS, DiffusionBackend, backend_for_pipeline
from .backends.base import LoadSettings
from .backends.speed import SpeedOptions
from .errors import CheckpointError, UnsupportedPromptError  # noqa: F401 (re-exported: its old home)
from .settings import ScorerSettings
from .weights import model_files, safetensors_problem, weights_fingerprint


@dataclass(frozen=True)
class CheckpointAlias:
    hub_id: str
    note: str


#: short names for public checkpoints (resolution and parameterisation are read from the
#: checkpoint's own configs, never from this table)
ALIASES: dict[str, CheckpointAlias] = {
    "sd1.4": CheckpointAlias("CompVis/stable-diffusion-v1-4", "SD 1.4, 512 px, epsilon (Clark & Jaini)"),
    "sd1.5": CheckpointAlias("stable-diffusion-v1-5/stable-diffusion-v1-5", "SD 1.5, 512 px, epsilon"),
    "sd2-base": CheckpointAlias("stabilityai/stable-diffusion-2-base", "SD 2.0-base, 512 px, epsilon (Li et al.)"),
    "sd2.1-base": CheckpointAlias("stabilityai/stable-diffusion-2-1-base", "SD 2.1-base, 512 px, epsilon"),
    "sd2": CheckpointAlias("stabilityai/stable-diffusion-2", "SD 2.0, 768 px, v-prediction"),
    "sd2.1": CheckpointAlias("stabilityai/stable-diffusion-2-1", "SD 2.1, 768 px, v-prediction"),
}
ALIASES.update({
    "sdxl": CheckpointAlias("stabilityai/stable-diffusion-xl-base-1.0", "SDXL base 1.0, 1024 px, epsilon"),
    "sd3-medium": CheckpointAlias("stabilityai/stable-diffusion-3-medium-diffusers", "SD3-medium, 1024 px, flow"),
    "sd3.5-medium": CheckpointAlias("stabilityai/stable-diffusion-3.5-medium", "SD3.5-medium, 1024 px, flow"),
    "sd3.5-large": CheckpointAlias("stabilityai/stable-diffusion-3.5-large", "SD3.5-large, 1024 px, flow"),
    "flux-dev": CheckpointAlias("black-forest-labs/FLUX.1-dev", "FLUX.1-dev, 1024 px, flow, guidance input"),
    "flux-schnell": CheckpointAlias("black-forest-labs/FLUX.1-schnell", "FLUX.1-schnell, 1024 px, flow"),
    "pixart-alpha": CheckpointAlias("PixArt-alpha/PixArt-XL-2-512x512", "PixArt-alpha 512 px, epsilon, T5"),
    "pixart-alpha-1024": CheckpointAlias("PixArt-alpha/PixArt-XL-2-1024-MS", "PixArt-alpha 1024 px, epsilon, T5"),
    "pixart-sigma": CheckpointAlias("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "PixArt-Sigma 1024 px, epsilon, T5"),
    "pixart-sigma-512": CheckpointAlias("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", "PixArt-Sigma 512 px, epsilon, T5"),
    "dit-xl-2-256": CheckpointAlias("facebook/DiT-XL-2-256", "DiT-XL/2 256 px, class-conditional ImageNet"),
    "dit-xl-2-512": CheckpointAlias("facebook/DiT-XL-2-512", "DiT-XL/2 512 px, class-conditional ImageNet"),
    "if-i-xl": CheckpointAlias("DeepFloyd/IF-I-XL-v1.0", "DeepFloyd IF stage I XL, 64 px pixels, T5"),
    "if-i-l": CheckpointAlias("DeepFloyd/IF-I-L-v1.0", "DeepFloyd IF stage I L, 64 px pixels, T5"),
    "if-i-m": CheckpointAlias("DeepFloyd/IF-I-M-v1.0", "DeepFloyd IF stage I M, 64 px pixels, T5"),
})
#: the newest open families (hub ids as the installed diffusers' pipeline docs and tests name them)
ALIASES.update({
    "qwen-image": CheckpointAlias("Qwen/Qwen-Image", "Qwen-Image 20B, 1024 px, flow, Qwen2.5-VL-7B text"),
    "flux2-dev": CheckpointAlias("black-forest-labs/FLUX.2-dev", "FLUX.2 [dev] 32B, 1024 px, flow, guidance input, "
                                 "Mistral-Small-3.1-24B text"),
    "flux2-klein-4b": CheckpointAlias("black-forest-labs/FLUX.2-klein-4B",
                                      "FLUX.2 [klein] 4B, 1024 px, flow, Qwen3 text"),
    "flux2-klein-base-9b": CheckpointAlias("black-forest-labs/FLUX.2-klein-base-9B",
                                           "FLUX.2 [klein] base 9B, 1024 px, flow, Qwen3 text"),
    "z-image-turbo": CheckpointAlias("Tongyi-MAI/Z-Image-Turbo", "Z-Image-Turbo 6B, 1024 px, flow (reversed time), "
                                     "Qwen3-4B text"),
    "sana-1600m": CheckpointAlias("Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
                                  "Sana 1.6B, 1024 px, flow, Gemma2-2B text"),
    "lumina2": CheckpointAlias("Alpha-VLLM/Lumina-Image-2.0", "Lumina-Image 2.0, 1024 px, flow (reversed time), "
                               "Gemma2-2B text"),
    "hidream-i1-full": CheckpointAlias("HiDream-ai/HiDream-I1-Full", "HiDream-I1-Full 17B, 1024 px, flow, CLIP-L/G + "
                                       "T5 + Llama-3.1-8B text (Llama saved into the folder: see docs/families.md)"),
    "chroma1-hd": CheckpointAlias("lodestones/Chroma1-HD", "Chroma1-HD 8.9B, 1024 px, flow, T5 text"),
    "cogview4": CheckpointAlias("THUDM/CogView4-6B", "CogView4 6B, 1024 px, flow, GLM-4-9B text"),
    "hunyuanimage-2.1": CheckpointAlias("hunyuanvideo-community/HunyuanImage-2.1-Diffusers",
                                        "HunyuanImage 2.1 17B, 2048 px, flow, Qwen2.5-VL-7B + ByT5 text"),
})
ALIASES["sd2.0-base"] = ALIASES["sd2-base"]
ALIASES["sd2.0"] = ALIASES["sd2"]
ALIASES["sdxl-base"] = ALIASES["sdxl"]

#: what `--pretrained` means when the user leaves clip_benchmark's own default in place
CLIP_BENCHMARK_DEFAULT_PRETRAINED = "laion400m_e32"
DEFAULT_CHECKPOINT = "sd2-base"

def _packaged_checkpoints() -> dict[str, str]:
    """Names of the checkpoints shipped inside this package (`reference`'s weights) -> their folders."""
    found: dict[str, str] = {}
    try:
        from .reference import REFERENCE_FLOW_DIR, REFERENCE_SD_DIR
    except ImportError:
        return found
    for names, folder in ((("ref-world", "ref-world-sd"), REFERENCE_SD_DIR), (("ref-world-flow",), REFERENCE_FLOW_DIR)):
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            for name in names:
                found.setdefault(name, folder)
    return found


def resolve(pretrained: str) -> str:
    """Alias / folder / hub id -> what `from_pretrained` should be given."""
    name = (pretrained or "").strip()
    if name in ("", CLIP_BENCHMARK_DEFAULT_PRETRAINED):
        name = DEFAULT_CHECKPOINT
    packaged = _packaged_checkpoints()
    if name in packaged:
        return packaged[name]
    if name in ALIASES:
        return ALIASES[name].hub_id
    return os.path.expanduser(name)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _describe(pretrained: str, source: str) -> str:
    return f"'{pretrained}'" if pretrained == source else f"'{pretrained}' (-> {source})"


class Located(NamedTuple):
    """A checkpoint `locate` found and checked: a run locates once, before any compute, and hands
    this to the load (`load_backend(..., located=...)`)."""

    folder: str
    index: dict  # its model_index.json


def locate(pretrained: str, cache_dir: Optional[str] = None, settings: Optional[ScorerSettings] = None
           ) -> Located:
    """Find the checkpoint folder and read its `model_index.json`, or raise CheckpointError.
    `settings` are checked against the family (`settings_problem`), and only the parts it needs
    with their load layer are fetched and checked."""
    load = LoadSettings.of(settings) if settings is not None else None
    source = resolve(pretrained)
    what = _describe(pretrained, source)
    how = ("pass --pretrained with a local diffusers folder (one containing model_index.json), "
           f"a hub id, or one of the aliases {sorted(set(ALIASES) | set(_packaged_checkpoints()))}")
    if os.path.isdir(source):
        folder = source
    elif _looks_like_hub_id(source):
        folder = _download_or_cached(source, what, cache_dir, load)
    else:
        raise CheckpointError(f"diffusion checkpoint {what}: no such folder, and not an alias or a hub id "
                              f"(owner/name); {how}")
    index_file = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_file):
        raise CheckpointError(f"diffusion checkpoint {what}: {folder} has no model_index.json, so it is not a "
                              f"diffusers pipeline folder (save one with pipeline.save_pretrained); {how}")
    index = read_model_index(index_file, what)
    class_name = index.get("_class_name", "?")
    backend_class = family(class_name, what)
    problem = backend_class.settings_problem(settings) if settings is not None else None
    if problem:
        raise CheckpointError(f"diffusion checkpoint {what} ({class_name}): {problem}")
    parts = backend_class.required_parts(index, load)
    missing = [part for part in parts if not os.path.isdir(os.path.join(folder, part))]
    if missing:
        raise CheckpointError(f"diffusion checkpoint {what}: {folder} lacks the parts {missing} "
                              f"that a {class_name} needs")
    for relative in model_files(folder, parts):
        problem = safetensors_problem(os.path.join(folder, relative)) if relative.endswith(".safetensors") else None
        if problem:
            raise CheckpointError(f"diffusion checkpoint {what}: {os.path.join(folder, relative)} is damaged "
                                  f"({problem}); download or save it again")
    return Located(folder, index)


def read_model_index(path: str, what: str) -> dict:
    """`model_index.json` as a dict, or one CheckpointError line (invalid JSON, a list, empty, no class)."""
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"diffusion checkpoint {what}: {path} is not valid JSON ({type(error).__name__}: "
                              f"{str(error)[:120]}); save the pipeline again (pipeline.save_pretrained)") from None
    if not isinstance(index, dict) or not index.get("_class_name"):
        kind = "an empty object" if index == {} else f"a JSON {type(index).__name__}" \
            if not isinstance(index, dict) else "an object without _class_name"
        raise CheckpointError(f"diffusion checkpoint {what}: {path} is {kind}, not a diffusers pipeline index "
                              "(an object naming its _class_name); save the pipeline again")
    return index


def _looks_like_hub_id(name: str) -> bool:
    pieces = name.split("/")
    return len(pieces) == 2 and all(pieces) and not name.startswith(("/", ".", "~"))


def family(class_name: str, what: str) -> type:
    """The backend class of a pipeline class, or one CheckpointError line naming the supported ones."""
    try:
        return backend_for_pipeline(class_name)
    except KeyError:
        raise CheckpointError(f"diffusion checkpoint {what}: pipeline type {class_name} is not supported "
                              f"(supported: {sorted(BACKENDS)})") from None


def _download_or_cached(hub_id: str, what: str, cache_dir: Optional[str], load: Optional[LoadSettings] = None) -> str:
    """The index first, then only the subfolders its family needs (`required_parts`)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        index_file = hf_hub_download(hub_id, "model_index.json", cache_dir=cache_dir,
                                     local_files_only=_hub_offline())
    except Exception as error:  # huggingface_hub raises many types; all mean "not available"
        raise _unavailable(hub_id, what, error) from None
    index = read_model_index(index_file, what)
    parts = family(index.get("_class_name", "?"), what).required_parts(index, load)
    try:
        return snapshot_download(hub_id, allow_patterns=hub_patterns(parts), cache_dir=cache_dir,
                                 local_files_only=_hub_offline())
    except Exception as error:  # huggingface_hub raises many types; all mean "not available"
        raise _unavailable(hub_id, what, error) from None


def hub_patterns(parts: tuple[str, ...]) -> list[str]:
    """`allow_patterns` fetching the index and the given subfolders."""
    return ["model_index.json"] + [f"{part}/*" for part in parts]


def _unavailable(hub_id: str, what: str, error: Exception) -> CheckpointError:
    reason = "the hub is switched off (HF_HUB_OFFLINE=1) and it is not in the local cache" if _hub_offline() \
        else f"it could not be downloaded ({type(error).__name__})"
    return CheckpointError(
        f"diffusion checkpoint {what}: no local folder of that name, and as a hub id {reason}; download it on a "
        f"connected machine with `hf download {hub_id}` (same HF_HOME), or pass --pretrained "
        "/path/to/diffusers/folder")


def resolve_dtype(dtype: str, device: torch.device | str, backend_class: Optional[type] = None) -> torch.dtype:
    """"auto" = the family's choice (`auto_dtype`): float16 on CUDA for UNet families, bfloat16 for
    flow-matching and T5 families; float32 on CPU."""
    device = torch.device(device)
    if dtype == "auto":
        if backend_class is not None:
            return backend_class.auto_dtype(device)
        return torch.float16 if device.type == "cuda" else torch.float32
    resolved = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if device.type == "cpu" and resolved == torch.float16:
        raise CheckpointError("dtype float16 is not supported on CPU; use float32 or bfloat16")
    return resolved


def load_backend(pretrained: str, device: torch.device | str = "cpu", dtype: str = "auto",
                 cache_dir: Optional[str] = None, speed: Optional[SpeedOptions] = None,
                 settings: Optional[ScorerSettings] = None, located: Optional[Located] = None) -> DiffusionBackend:
    """Load the model family that the checkpoint's `model_index.json` names. The run's `settings` are
    checked against the family (`locate`, unless the run already did: `located`); the family is built
    with their load layer only (`LoadSettings`: resolution, drop_t5, guidance), the scorer takes the rest."""
    folder, index = located or locate(pretrained, cache_dir=cache_dir, settings=settings)
    backend_class = backend_for_pipeline(index["_class_name"])
    load = LoadSettings.of(settings) if settings is not None else LoadSettings()
    try:
        backend = backend_class.from_pretrained(folder, device=device,
                                                dtype=resolve_dtype(dtype, device, backend_class),
                                                local_files_only=True, speed=speed or SpeedOptions(), load=load)
    except Exception as error:  # diffusers/transformers raise many types for a file they cannot load
        if os.environ.get("CLIP_BENCHMARK_DIFFUSION_DEBUG"):
            raise
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"diffusion checkpoint {_describe(pretrained, folder)} could not be loaded: "
                              f"{type(error).__name__}: {reason} (set CLIP_BENCHMARK_DIFFUSION_DEBUG=1 for the "
                              "traceback)") from error
    # the record must name the weights themselves, not only their folder (see `weights.py`)
    backend.description["weights"] = weights_fingerprint(folder, backend_class.required_parts(index, load))
    return backend
