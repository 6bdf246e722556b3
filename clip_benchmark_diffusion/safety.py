"""Checks that keep a run from silently destroying work or reporting garbage, each raising one line.

They run before the model or the dataset loads wherever what they need is known then (paths,
flags), so a run that cannot end well stops in seconds. `registration` calls the path checks;
`settings` calls `check_numbers`; the scorer calls `check_finite` and `check_table_memory`.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

from .errors import NonFiniteError, ResourceLimit, warn  # noqa: F401 (re-exported: its old home)

#: the largest --diffusion_resolution accepted (pixels per side): 4096 px is 4x SDXL's native
#: size; beyond it one latent row alone no longer fits a GPU
MAX_RESOLUTION = 4096
#: the largest --diffusion_batch_size accepted (network rows per call); buffers are sized by the
#: rows a pass really has, so this only guards against typos
MAX_BATCH_SIZE = 1 << 16
#: the most host memory the per-draw bookkeeping of one image batch may take (errors of every
#: candidate at every draw, float64); CLIP_BENCHMARK_DIFFUSION_TABLE_LIMIT_GB overrides it
DEFAULT_TABLE_LIMIT_BYTES = 4 << 30
#: heuristic rates k beyond this make exp(-k t) overflow or vanish in float32 over t in [0, 1]
MAX_HEURISTIC_RATE = 80.0


# ------------------------------------------------------------------------------ numeric flags
def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def number_problems(settings: Any) -> list[str]:
    """What is wrong with the numbers of `ScorerSettings` (NaN, inf, impossible sizes); [] if nothing."""
    problems = []
    weights = tuple(settings.bucket_weights)
    if weights:
        if not all(_finite(w) for w in weights):
            problems.append(f"bucket weights must be finite, got {list(weights)}")
        elif any(w < 0 for w in weights):
            problems.append(f"bucket weights must be >= 0, got {list(weights)}")
        elif not any(w > 0 for w in weights):
            problems.append(f"bucket weights are all zero ({list(weights)}): every error would be 0 and every "
                            "image class 0; give at least one bucket a positive weight")
    if not _finite(settings.heuristic_rate) or abs(settings.heuristic_rate) > MAX_HEURISTIC_RATE:
        problems.append(f"heuristic_rate must be finite and within +-{MAX_HEURISTIC_RATE:g} (exp(-k t) over t in "
                        f"[0, 1] overflows or vanishes beyond), got {settings.heuristic_rate}")
    for name in ("guidance", "logit_normal_mean", "logit_normal_std", "ttest_p"):
        if not _finite(getattr(settings, name)):
            problems.append(f"{name} must be finite, got {getattr(settings, name)}")
    if settings.resolution is not None and settings.resolution > MAX_RESOLUTION:
        problems.append(f"resolution {settings.resolution} is above the limit of {MAX_RESOLUTION} px per side "
                        f"(one {settings.resolution}x{settings.resolution} image alone is "
                        f"{3 * 4 * settings.resolution ** 2 / 2 ** 30:.1f} GiB in float32 before any network call)")
    if settings.batch_size > MAX_BATCH_SIZE:
        problems.append(f"batch_size {settings.batch_size} is above the limit of {MAX_BATCH_SIZE} rows per "
                        "network call")
    return problems


def check_numbers(settings: Any) -> None:
    """Raise ValueError (the settings' own error type) naming the first bad number."""
    problems = number_problems(settings)
    if problems:
        raise ValueError(f"invalid scorer setting: {problems[0]}")


def ignored_flag_warnings(options: Any, defaults: Any) -> list[str]:
    """Flags given with an objective that does not use them (they would be silently ignored)."""
    found = []
    objective = options.diffusion_objective
    if objective != "x0_buckets" and (options.diffusion_bucket_weights or
                                      getattr(options, "diffusion_bucket_weights_file", None)):
        found.append(f"--diffusion_bucket_weights has no effect with --diffusion_objective {objective} (only "
                     "x0_buckets uses them)")
    if objective != "x0_heuristic" and options.diffusion_heuristic_rate != defaults.diffusion_heuristic_rate:
        found.append(f"--diffusion_heuristic_rate has no effect with --diffusion_objective {objective} (only "
                     "x0_heuristic uses it)")
    if options.diffusion_logit_normal and options.diffusion_sigma_distribution != "logit_normal":
        found.append(f"--diffusion_logit_normal has no effect with --diffusion_sigma_distribution "
                     f"{options.diffusion_sigma_distribution} (only logit_normal uses it)")
    return found


def ignored_by_family(settings: Any, pipeline_class: str) -> list[str]:
    """Flags the checkpoint's family does not use (found from its model_index.json, before loading)."""
    found = []
    if settings.guidance != 1.0 and not pipeline_class.startswith("Flux"):
        found.append(f"--diffusion_guidance has no effect on a {pipeline_class} (only FLUX.1-dev has a guidance "
                     "input)")
    return found


def diffusion_flags_given(options: Any, defaults: Any, ignore: Sequence[str] = ("diffusion_predictions",)
                          ) -> list[str]:
    """The `--diffusion_*` flags whose values differ from their defaults."""
    return [f"--{name}" for name, value in sorted(vars(options).items())
            if name not in ignore and value != getattr(defaults, name, value)]


def class_count_problem(settings: Any, classes: Optional[int]) -> Optional[str]:
    """Checks that need the number of classes, done before the model loads when it is known."""
    if not classes:
        return None
    if settings.max_candidates < classes:
        return (f"--diffusion_max_candidates {settings.max_candidates} is below the dataset's {classes} classes; "
                "raise it or drop the flag")
    scored = min(classes, settings.prefilter_k or classes)
    if settings.max_calls and settings.max_calls < scored:
        return (f"--diffusion_max_calls {settings.max_calls} cannot pay for one draw of each of the {scored} "
                "candidates scored per image; raise it (or pre-filter to fewer classes)")
    return None


def prefilter_problem(settings: Any) -> Optional[str]:
    """An unknown open_clip pre-filter model or pretrained tag, found before any model loads."""
    if not settings.prefilter_model:
        return None
    try:
        import open_clip

        from .reference import register_reference_clip

        register_reference_clip()
        models = open_clip.list_models()
    except Exception:  # open_clip missing or changed: the pre-filter's own load will say so
        return None
    model, pretrained = settings.prefilter_model, settings.prefilter_pretrained
    if model.startswith(("hf-hub:", "local-dir:")):
        return None  # fetched or read by open_clip itself
    if model not in models:
        return (f"--diffusion_prefilter: open_clip has no model {model!r} (e.g. {', '.join(models[:3])}; "
                "open_clip.list_models() lists all)")
    tags = open_clip.list_pretrained_tags_by_model(model)
    cleaned = [tag.lower().replace("-", "_") for tag in tags]
    if pretrained and pretrained.lower().replace("-", "_") not in cleaned and not os.path.isfile(pretrained):
        return (f"--diffusion_prefilter: {model} has no pretrained weights {pretrained!r} (known: "
                f"{', '.join(tags) or 'none'}; a file path works too)")
    return None


# ------------------------------------------------------------------------------ scores
def check_finite(errors: Any, image: str, candidate_of_row: Any, dtype: Any) -> None:
    """Raise NonFiniteError when a row's error is NaN or infinite. `candidate_of_row(k)` names the
    candidate of row k; `image` names the image."""
    import torch

    bad = torch.nonzero(~torch.isfinite(errors)).flatten()
    if len(bad) == 0:
        return
    row = int(bad[0])
    value = float(errors[row])
    dtype_name = str(dtype).replace("torch.", "")
    advice = ("the network overflowed in half precision: try --diffusion_dtype bfloat16 or float32"
              if dtype_name == "float16" else
              "try --diffusion_dtype float32" if dtype_name == "bfloat16" else
              "the weights themselves give it (check the checkpoint for NaN/inf tensors) or a weighting overflowed")
    raise NonFiniteError(f"{image}, candidate {candidate_of_row(row)!r}: the error is {value} in {dtype_name} "
                         f"({len(bad)} of {len(errors)} rows of this round are not finite); no result is written "
                         f"and the images scored before are kept in the record; {advice}")


def check_table_memory(images: int, candidates: int, draws: int) -> None:
    """Before the per-draw tables of an image batch are allocated: their float64 bytes against the limit."""
    limit = table_limit_bytes()
    estimate = images * (candidates * draws * 8 + draws * 8)
    if estimate > limit:
        raise ResourceLimit(f"{draws:,} draws x {candidates:,} candidates x {images} images need "
                            f"{estimate / 2 ** 30:,.1f} GiB of per-draw tables, above the limit of "
                            f"{limit / 2 ** 30:,.1f} GiB (CLIP_BENCHMARK_DIFFUSION_TABLE_LIMIT_GB); lower "
                            "--diffusion_draws, set --diffusion_max_calls, or use a smaller --batch_size")


def table_limit_bytes() -> int:
    text = os.environ.get("CLIP_BENCHMARK_DIFFUSION_TABLE_LIMIT_GB")
    try:
        return int(float(text) * 2 ** 30) if text else DEFAULT_TABLE_LIMIT_BYTES
    except ValueError:
        return DEFAULT_TABLE_LIMIT_BYTES


def table_draws(max_draws: int, max_calls: int, calls_per_prediction: int = 1) -> int:
    """Columns a per-draw table needs: the strategy's maximum, or fewer when the call cap cannot pay
    for more (each draw of a candidate costs at least `calls_per_prediction` calls)."""
    if not max_calls:
        return max_draws
    return max(1, min(max_draws, max_calls // max(calls_per_prediction, 1)))


# ------------------------------------------------------------------------------ files
def _first_line(path: str, limit: int = 1 << 20) -> Optional[Any]:
    """The first line of a file parsed as JSON; None if empty, unreadable or not JSON."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline(limit)
        return json.loads(line) if line.strip() else None
    except (OSError, ValueError):
        return None


def is_record(path: str) -> bool:
    """Does `path` hold a diffusion record (its first line a record header)?"""
    first = _first_line(path)
    return isinstance(first, dict) and first.get("type") == "header"


def _not_a_record(path: str) -> bool:
    """Something else is there that a record must not replace (a result JSON, predictions)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    first = _first_line(path)
    return first is not None and not (isinstance(first, dict) and first.get("type") in ("header", "image", "summary"))


def _same(a: Optional[str], b: Optional[str]) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def _writable_folder(path: str) -> Optional[str]:
    """The nearest existing folder of `path` if it cannot be written to, else None."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return None if os.access(folder, os.W_OK | os.X_OK) else folder


def output_problem(record_path: str, output: str, predictions: Optional[str], skip_existing: bool = False
                   ) -> Optional[str]:
    """Why this run's files would destroy a record or cannot be written, or None. Checked before
    any work: each would otherwise be found after the last image (and a record lost)."""
    if os.path.isdir(record_path) or record_path.endswith(("/", os.sep)):
        return (f"--diffusion_records {record_path} is a folder; pass a file path, e.g. "
                f"{os.path.join(record_path, 'run.diffusion.jsonl')}")
    if _same(record_path, output):
        return (f"--diffusion_records {record_path} is also the result JSON clip_benchmark writes at the end, "
                "which would replace every score; pass another path")
    if _same(record_path, predictions):
        return (f"--diffusion_records {record_path} is also the predictions file written at the end, which "
                "would replace every score; pass another path")
    if _not_a_record(record_path):
        return (f"--diffusion_records {record_path} holds something that is not a diffusion record (another "
                "run's result JSON or predictions?); pass another path or move that file away")
    if not (skip_existing and os.path.exists(output)):
        for flag, path in (("--output", output), ("the predictions file", predictions)):
            if path and os.path.isfile(path) and is_record(path):
                return (f"{flag} {path} is an existing diffusion record, which the run would replace at the "
                        "end; pick another --output or move the record away")
    for path in (record_path, output, predictions):
        folder = _writable_folder(path) if path and path != os.devnull else None
        if folder:
            return f"{path} cannot be written: the folder {folder} is read-only (or not ours); pass another path"
    return None


# ------------------------------------------------------------------------------ images
_WARNED_16_BIT: list = []


def to_rgb(image: Any) -> Any:
    """`image.convert("RGB")`, except that 16/32-bit integer images (16-bit grayscale PNG, TIFF) are
    scaled to 8 bits first: PIL's own conversion clips them, and every image reads as white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        import numpy as np
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        if values.size and values.max() > 255:
            if not _WARNED_16_BIT:
                _WARNED_16_BIT.append(True)
                warn(f"16-bit images (mode {image.mode}) are scaled to 8 bits per channel for the model (PIL's "
                     "own conversion would clip them to white)")
            top = 65535.0 if values.max() <= 65535 else float(values.max())
            values = np.clip(np.round(values * 255.0 / top), 0, 255)
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    return image.convert("RGB")
