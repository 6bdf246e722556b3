"""Vocabulary of the reference world and a pure renderer for scene descriptions.

A :class:`Scene` fully describes an image (including the seeds of its noise), so
:func:`render` is a pure function: sampling randomness lives in ``scenes.py``
and never here. Objects are drawn at ``SUPERSAMPLE`` times the final resolution
and downsampled with LANCZOS so that edges are antialiased at 32x32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE: int = 32
SUPERSAMPLE: int = 4
CANVAS_SIZE: int = IMAGE_SIZE * SUPERSAMPLE

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
# TEXTURES[i] is the typical texture of SHAPES[i] (the "texture class" of a
# cue-conflict sample is the index of the shape whose typical texture it wears).
TEXTURES: tuple[str, ...] = ("stripes", "dots", "checker", "zigzag", "grid", "noise")
TYPICAL_TEXTURE: dict[str, str] = dict(zip(SHAPES, TEXTURES))

# Saturated, mutually distant colours; backgrounds are low-saturation greys so
# no background can be mistaken for an object colour.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 180),
    "orange": (250, 140, 10),
}

# Amount by which the texture's second tone is pushed towards white (dark
# colours) or black (bright colours); small enough that the textured object's
# average colour stays nearest its named colour.
_SHADE_AMOUNT = 0.35
_BACKGROUND_NOISE_STD = 10.0  # at canvas resolution; ~1/4 of that after downsampling


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it is (shape, colour, texture) and where it is.

    ``box`` is ``(x0, y0, side)`` of the object's square bounding box in output
    pixels; ``texture_seed`` fixes the texture's phase (and noise), so the
    object renders identically every time.
    """

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    box: tuple[float, float, float]
    texture: str | None = None
    texture_seed: int = 0


@dataclass(frozen=True)
class Scene:
    """A full image description: background tone, its noise seed and the objects (left to right)."""

    background: tuple[int, int, int]
    noise_seed: int
    objects: tuple[ObjectSpec, ...]


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline of ``shape`` in a unit square ([0, 1]^2, y pointing down), centred at (0.5, 0.5)."""
    if shape == "square":
        a, b = 0.08, 0.92  # slightly inset so its area is not far above the other shapes'
        return [(a, a), (b, a), (b, b), (a, b)]
    if shape == "triangle":
        return [(0.5, 0.02), (0.98, 0.92), (0.02, 0.92)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = 0.5 if k % 2 == 0 else 0.22
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        # the star's bounding box is not centred on its centre; centre it.
        return _centre(points)
    if shape == "cross":
        a, b = 0.32, 0.68
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    if shape == "heart":
        # classic parametric heart curve; y is flipped because image y points down.
        points = []
        for k in range(72):
            t = 2 * math.pi * k / 72
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x, -y))
        return _centre(points)
    raise ValueError(f"no polygon for shape {shape!r}")


def _centre(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Scale/translate points so their bounding box is centred in the unit square with side 1 on its longer axis."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    scale = 1.0 / max(max(xs) - min(xs), max(ys) - min(ys))
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return [((x - cx) * scale + 0.5, (y - cy) * scale + 0.5) for x, y in points]


def shape_mask(shape: str, box: tuple[float, float, float], size: int = CANVAS_SIZE) -> Image.Image:
    """Binary ("L") mask of ``shape`` in ``box`` (output-pixel units) on a ``size`` canvas."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    scale = size / IMAGE_SIZE
    x0, y0, side = (v * scale for v in box)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + side, y0 + side], fill=255)
    else:
        draw.polygon([(x0 + u * side, y0 + v * side) for u, v in _unit_polygon(shape)], fill=255)
    return mask


def shade_of(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Second texture tone: lighter for dark colours, darker for bright ones, to keep contrast."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    target = 255.0 if luminance < 140 else 0.0
    return tuple(int(round(c + (target - c) * _SHADE_AMOUNT)) for c in rgb)  # type: ignore[return-value]


def texture_pattern(texture: str, seed: int, size: int = CANVAS_SIZE) -> np.ndarray:
    """Weight in [0, 1] of the shade tone per canvas pixel (0 = base colour).

    Periods are ~5-6 output pixels so that 2-4 repetitions fit inside an object.
    The phase comes from ``seed`` so textures are not anchored to the image grid.
    """
    rng = np.random.default_rng(seed)
    ox, oy = (int(v) for v in rng.integers(0, 64, size=2))
    yy, xx = np.mgrid[0:size, 0:size]
    xx, yy = xx + ox, yy + oy
    if texture == "stripes":  # vertical bars
        on = (xx // 11) % 2 == 0
    elif texture == "dots":  # polka dots on a square lattice
        period = 22
        on = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < 7.5**2
    elif texture == "checker":
        on = ((xx // 14) + (yy // 14)) % 2 == 0
    elif texture == "zigzag":  # horizontal zigzag bands
        tri = np.abs((xx % 24) - 12)
        on = ((yy + tri) % 20) < 8
    elif texture == "grid":  # thin horizontal + vertical lines
        on = ((xx % 22) < 6) | ((yy % 22) < 6)
    elif texture == "noise":  # solid colour with blocky speckle noise
        blocks = rng.random((size // 8 + 2, size // 8 + 2))
        return blocks[(yy // 8) % blocks.shape[0], (xx // 8) % blocks.shape[1]]
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    return on.astype(np.float64)


def _object_fill(obj: ObjectSpec, size: int) -> Image.Image:
    """RGB image with which the object's mask is filled: flat colour or its texture."""
    if obj.texture is None:
        return Image.new("RGB", (size, size), obj.rgb)
    weight = texture_pattern(obj.texture, obj.texture_seed, size)[..., None]
    base, shade = np.array(obj.rgb, dtype=np.float64), np.array(shade_of(obj.rgb), dtype=np.float64)
    pixels = base * (1 - weight) + shade * weight
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an ``IMAGE_SIZE`` x ``IMAGE_SIZE`` RGB image (pure and deterministic)."""
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, _BACKGROUND_NOISE_STD, (CANVAS_SIZE, CANVAS_SIZE, 3))
    background = np.clip(np.round(np.array(scene.background, dtype=np.float64) + noise), 0, 255)
    canvas = Image.fromarray(background.astype(np.uint8), "RGB")
    for obj in scene.objects:
        canvas.paste(_object_fill(obj, CANVAS_SIZE), (0, 0), shape_mask(obj.shape, obj.box))
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
