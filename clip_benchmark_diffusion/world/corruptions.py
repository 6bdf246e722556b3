"""World-C: seeded, deterministic corruptions of the reference world's test sets, in ImageNet-C's layout.

``<out>/<task>/<corruption>/<severity>/`` is a clip_benchmark ``wds/`` classification folder (the same
files as the clean set in ``writer.py``), so ``clip_benchmark eval --dataset wds/<task>
--dataset_root <out>/<task>/gaussian_noise/3`` reads it unchanged. Sample ``i`` of every folder is
sample ``i`` of the clean test set (same ``n`` and ``seed``) after one corruption.

The operations are library ones (torchvision's Gaussian blur and erasing, PIL's JPEG codec,
contrast enhancer and resampling); only their randomness (noise, occluder position) is ours,
drawn from ``(seed, task, corruption, index)``: the random pattern of an image is the same at every
severity, only its strength changes, so accuracy falls with severity for the corruption itself and
not for a different draw. Severity parameters (``SEVERITY_PARAMETERS``), for 32 px images:

* ``gaussian_noise``: additive N(0, sigma^2) per channel, sigma = 0.08, 0.12, 0.18, 0.26, 0.38 of the
  0-255 range (ImageNet-C's values), then clipped;
* ``gaussian_blur``: Gaussian kernel of standard deviation 0.5, 0.75, 1, 1.5, 2 pixels (objects are
  13-26 px wide), kernel of 2 * ceil(3 sigma) + 1 taps, reflected borders;
* ``jpeg``: JPEG re-encoding at quality 25, 18, 15, 10, 7 (ImageNet-C's values), stored decoded (PNG);
* ``contrast``: pixel values pulled towards the image's mean grey, keeping 0.4, 0.3, 0.2, 0.1, 0.05 of
  their deviation (ImageNet-C's values; PIL's contrast enhancer);
* ``pixelate``: box-downsampled to 0.6, 0.5, 0.4, 0.3, 0.25 of the side (19, 16, 13, 10, 8 px, as
  ImageNet-C's factors) and enlarged back with nearest neighbours;
* ``occlusion``: a mid-grey (128) square covering 10, 20, 30, 40, 50 % of the image (rounded to whole
  pixels), at a seeded position;
* ``overlay`` (an *extra* corruption, as ImageNet-C has extra ones outside its mCE set: written only
  when asked for, not part of the default set or its mean corruption error): a translucent image of
  the *next* class blended over the image (a reflection in glass, a double exposure), at 10, 20, 30,
  40, 45 % opacity (PIL's blend). It makes near-ties on purpose: the true class still dominates the
  pixels, but the errors of the two classes come close. It was built to find sets where 64 shared
  draws are clearly below 256; on ``ref-world`` it did not (README, "On world-C"). The distractor is a
  fresh test-style rendering of class ``(label + 1) mod classes`` from a seeded index beyond any test set.
"""
from __future__ import annotations

import io
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torchvision.transforms.v2 import functional as TF

from .scenes import TASKS, TEMPLATES, classnames, eval_sample, eval_samples
from .writer import Record, _test_record, _write_info, _write_lines, _write_shards

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
SEVERITY_PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),
    "jpeg": (25, 18, 15, 10, 7),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "occlusion": (0.1, 0.2, 0.3, 0.4, 0.5),
    "overlay": (0.1, 0.2, 0.3, 0.4, 0.45),
}
#: written only when asked for; not in the default set nor in its mean corruption error
EXTRA_CORRUPTIONS: tuple[str, ...] = ("overlay",)
#: the default set (ImageNet-C's layout, the probe's mCE)
CORRUPTIONS: tuple[str, ...] = tuple(c for c in SEVERITY_PARAMETERS if c not in EXTRA_CORRUPTIONS)
OCCLUDER_GREY: int = 128
#: classification tasks that have a world-C version (binding is caption selection)
CORRUPTIBLE_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t != "binding")


def severity_parameter(corruption: str, severity: int) -> float:
    """The documented strength of ``corruption`` at ``severity`` (1-5)."""
    if corruption not in SEVERITY_PARAMETERS:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {tuple(SEVERITY_PARAMETERS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    return SEVERITY_PARAMETERS[corruption][severity - 1]


def corruption_rng(seed: int, stream: str, corruption: str, index: int) -> np.random.Generator:
    """The random pattern of one image: independent of the severity (see the module docstring)."""
    return np.random.default_rng([seed, zlib.crc32(f"{stream}/{corruption}".encode("utf-8")), index])


def _as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def _from_array(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "RGB")


#: distractors of ``overlay`` come from test indices at least this far out, so none is a test image itself
DISTRACTOR_INDEX_OFFSET: int = 10**6


def distractor_image(task: str, index: int, seed: int, rng: np.random.Generator) -> Image.Image:
    """The ``overlay`` distractor of test sample ``index``: a rendering of the next class, never a test image.

    Test labels cycle over the classes (``eval_sample``), so index ``index + 1 + classes * m`` has label
    ``label + 1`` for every ``m``; ``m`` is drawn from ``rng`` (the image's corruption stream).
    """
    classes = len(classnames(task))
    m = int(rng.integers(DISTRACTOR_INDEX_OFFSET, 2 * DISTRACTOR_INDEX_OFFSET))
    return eval_sample(task, index + 1 + classes * m, seed).image


def corrupt(image: Image.Image, corruption: str, severity: int, rng: np.random.Generator,
            distractor: Image.Image | None = None) -> Image.Image:
    """``image`` after ``corruption`` at ``severity``; ``rng`` supplies the noise / occluder position.

    ``overlay`` needs ``distractor``, the image blended over ``image`` (``distractor_image`` for world-C).
    """
    value = severity_parameter(corruption, severity)
    image = image.convert("RGB")
    if corruption == "overlay":
        if distractor is None:
            raise ValueError("the overlay corruption needs a distractor image")
        return Image.blend(image, distractor.convert("RGB").resize(image.size), value)
    if corruption == "gaussian_noise":
        noise = rng.standard_normal((image.height, image.width, 3))
        return _from_array(_as_array(image) + noise * value * 255)
    if corruption == "gaussian_blur":
        taps = 2 * math.ceil(3 * value) + 1
        return TF.gaussian_blur(image, kernel_size=[taps, taps], sigma=[value, value])
    if corruption == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(value))
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            return decoded.convert("RGB")
    if corruption == "contrast":
        return ImageEnhance.Contrast(image).enhance(value)
    if corruption == "pixelate":
        small = max(1, round(image.width * value)), max(1, round(image.height * value))
        return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.NEAREST)
    # occlusion: a square of the documented area at a position uniform over the image
    side = round(math.sqrt(value * image.width * image.height))
    top, left = (int(v) for v in rng.integers(0, [image.height - side + 1, image.width - side + 1]))
    pixels = TF.pil_to_tensor(image)
    occluded = TF.erase(pixels, top, left, side, side, torch.tensor(OCCLUDER_GREY, dtype=pixels.dtype))
    return TF.to_pil_image(occluded)


def corrupted_samples(task: str, corruption: str, severity: int, n: int, seed: int = 1) -> Iterator[tuple[int, Record]]:
    """(index, tar record) of the first ``n`` samples of ``task`` (seed ``seed``) after the corruption."""
    for index, sample in enumerate(eval_samples(task, n, seed)):
        rng = corruption_rng(seed, task, corruption, index)
        distractor = distractor_image(task, index, seed, rng) if corruption == "overlay" else None
        image = corrupt(sample.image, corruption, severity, rng, distractor)
        yield index, _test_record(index, replace(sample, image=image))


def write_corrupted_set(out_dir: str, task: str, corruption: str, severity: int, n: int, seed: int = 1) -> str:
    """Write ``<out_dir>/<task>/<corruption>/<severity>/`` as a clip_benchmark wds folder; returns it."""
    if task not in CORRUPTIBLE_TASKS:
        raise ValueError(f"world-C covers the classification tasks {CORRUPTIBLE_TASKS}, not {task!r}")
    severity_parameter(corruption, severity)  # validates both
    root = os.path.join(out_dir, task, corruption, str(severity))
    records = (record for _, record in corrupted_samples(task, corruption, severity, n, seed))
    _write_shards(os.path.join(root, "test"), records, n, desc=f"{task} {corruption} {severity}")
    _write_info(root, "classification", task=task, split="test", n=n, seed=seed, corruption=corruption,
                severity=severity, parameter=severity_parameter(corruption, severity))
    _write_lines(os.path.join(root, "classnames.txt"), classnames(task))
    _write_lines(os.path.join(root, "zeroshot_classification_templates.txt"), TEMPLATES)
    return root


def write_world_c(out_dir: str, tasks: Sequence[str], n: int, seed: int = 1,
                  corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES
                  ) -> dict[tuple[str, str, int], str]:
    """Every (task, corruption, severity) folder; returns {(task, corruption, severity): path}."""
    return {(task, c, s): write_corrupted_set(out_dir, task, c, s, n, seed)
            for task in tasks for c in corruptions for s in severities}


def main(argv: Sequence[str] | None = None) -> dict[tuple[str, str, int], str]:
    """``python -m clip_benchmark_diffusion.world.corruptions --out DIR [--tasks ...] [--n-test N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clip_benchmark_diffusion.world.corruptions",
                                     description="Write world-C: corrupted reference-world test sets "
                                                 "(<out>/<task>/<corruption>/<severity>/, clip_benchmark wds).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tasks", nargs="+", choices=CORRUPTIBLE_TASKS, default=["shape"])
    parser.add_argument("--n-test", type=int, default=100, help="images per (corruption, severity)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clean test set (default 1, as the world's)")
    parser.add_argument("--corruptions", nargs="+", choices=list(SEVERITY_PARAMETERS), default=list(CORRUPTIONS),
                        help=f"default: {' '.join(CORRUPTIONS)}; "
                             f"extra (only when named): {' '.join(EXTRA_CORRUPTIONS)}")
    parser.add_argument("--severities", nargs="+", type=int, choices=SEVERITIES, default=list(SEVERITIES))
    args = parser.parse_args(argv)
    paths = write_world_c(args.out, args.tasks, args.n_test, args.seed, args.corruptions, args.severities)
    for (task, corruption, severity), path in paths.items():
        print(f"{task} {corruption} {severity}: {path}")
    return paths


__all__ = ["CORRUPTIONS", "CORRUPTIBLE_TASKS", "EXTRA_CORRUPTIONS", "SEVERITIES", "SEVERITY_PARAMETERS", "corrupt",
           "corruption_rng", "corrupted_samples", "distractor_image", "severity_parameter", "write_corrupted_set",
           "write_world_c"]


if __name__ == "__main__":
    main()
