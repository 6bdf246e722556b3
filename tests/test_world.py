"""Tests of the procedural reference world (clip_benchmark_diffusion.world): fast, CPU only, no network."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from clip_benchmark_diffusion.world import writer
from clip_benchmark_diffusion.world import (
    COLOUR_RGB,
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    TASKS,
    TEXTURES,
    TYPICAL_TEXTURE,
    binding_samples,
    classification_samples,
    cue_conflict_samples,
    training_samples,
    write_all,
    write_test_set,
    write_training_set,
)
from clip_benchmark_diffusion.world.__main__ import main as cli_main
from clip_benchmark_diffusion.world.render import shade_of, shape_mask
from clip_benchmark_diffusion.world.scenes import training_sample
from clip_benchmark_diffusion.world.writer import png_bytes

# third-party noise from clip_benchmark's own loader/metrics, not from the world package
pytestmark = [
    pytest.mark.filterwarnings(r"ignore:WebDataset\(shardshuffle=\.\.\.\) is None:UserWarning"),
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes:UserWarning"),
]

N_CLASSES = {"shape": 6, "colour": 6, "colour_shape": 36, "cue_conflict": 6}
SATURATION_MIN = 60  # object pixels are saturated; backgrounds are near-grey


# ---------------------------------------------------------------- helpers


def object_pixels(image: Image.Image) -> np.ndarray:
    """(N, 3) saturated pixels, i.e. the object(s), excluding the grey background."""
    pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3)
    return pixels[pixels.max(axis=1) - pixels.min(axis=1) > SATURATION_MIN]


# each colour with its texture tone, so textured objects are judged by their own palette
PALETTE = np.array([tone for c in COLOURS for tone in (COLOUR_RGB[c], shade_of(COLOUR_RGB[c]))], dtype=np.float64)


def nearest_colour(pixels: np.ndarray) -> str:
    """Majority vote of the pixels' nearest named colours (RGB in 0..255)."""
    distances = np.linalg.norm(pixels.reshape(-1, 1, 3) - PALETTE[None], axis=-1)
    votes = np.bincount(distances.argmin(axis=1) // 2, minlength=len(COLOURS))
    return COLOURS[int(votes.argmax())]


def halves(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    half = IMAGE_SIZE // 2
    return image.crop((0, 0, half, IMAGE_SIZE)), image.crop((half, 0, IMAGE_SIZE, IMAGE_SIZE))


def colour_words(text: str) -> list[str]:
    return [w for w in text.split() if w in COLOURS]


def shape_words(text: str) -> list[str]:
    return [w for w in text.split() if w in SHAPES]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def load(task: str, root: str, split: str = "test"):
    """Load a written dataset through clip_benchmark's own builder, as `clip_benchmark eval` does."""
    from clip_benchmark.datasets.builder import build_dataset

    with open(os.path.join(root, "dataset_type.txt")) as file:
        retrieval = file.read().strip() == "retrieval"
    # like `clip_benchmark eval --task image_caption_selection` (no class names/templates needed)
    kind = "image_caption_selection" if retrieval else "zeroshot_classification"
    return build_dataset(dataset_name=f"wds/{task}", root=root, transform=transforms.ToTensor(), split=split, task=kind)


class ColourOracle(torch.nn.Module):
    """CLIP-like stand-in that "sees" only colours: one-hot colour per image half / per colour word.

    Scoring written datasets with it through clip_benchmark's metrics checks,
    end to end, that labels, class names, templates and captions agree with the pixels.
    """

    def __init__(self, per_half: bool) -> None:
        super().__init__()
        self.per_half = per_half

    @staticmethod
    def _one_hot(colour: str) -> torch.Tensor:
        return F.one_hot(torch.tensor(COLOURS.index(colour)), len(COLOURS)).float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        features = []
        for tensor in images:
            image = transforms.ToPILImage()(tensor)
            parts = halves(image) if self.per_half else (image,)
            features.append(torch.cat([self._one_hot(nearest_colour(object_pixels(p))) for p in parts]))
        return torch.stack(features)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.cat([self._one_hot(c) for c in colour_words(t)]) for t in texts])

    @staticmethod
    def tokenizer(texts: list[str]) -> "_Texts":
        return _Texts(texts)


class _Texts(list):
    """Token stand-in: clip_benchmark calls ``tokenizer(texts).to(device)``."""

    def to(self, device: str) -> "_Texts":
        return self


# ---------------------------------------------------------------- vocabulary and rendering


def test_vocabulary() -> None:
    assert IMAGE_SIZE == 32
    assert len(set(SHAPES)) == len(set(COLOURS)) == len(set(TEXTURES)) == 6
    assert TASKS == ("shape", "colour", "colour_shape", "binding", "cue_conflict")
    assert list(TYPICAL_TEXTURE) == list(SHAPES) and list(TYPICAL_TEXTURE.values()) == list(TEXTURES)
    rgb = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float64)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert distances[~np.eye(6, dtype=bool)].min() > 70  # well separated colours


def test_shapes_have_distinct_silhouettes() -> None:
    masks = {s: np.asarray(shape_mask(s, (2, 2, 28))) > 127 for s in SHAPES}
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1 :]:
            # the closest pair is circle vs (slightly inset) square, at ~0.82
            assert iou(masks[a], masks[b]) < 0.85, (a, b)


def test_backgrounds_are_far_from_object_colours() -> None:
    for i in range(50):
        background = np.array(training_sample(i).scene.background, dtype=np.float64)
        assert min(np.linalg.norm(background - COLOUR_RGB[c]) for c in COLOURS) > 100


# ---------------------------------------------------------------- training samples


def test_training_samples_are_deterministic_and_index_stable() -> None:
    first = [(png_bytes(im), cap) for im, cap in training_samples(12, seed=3)]
    again = [(png_bytes(im), cap) for im, cap in training_samples(12, seed=3)]
    prefix = [(png_bytes(im), cap) for im, cap in training_samples(5, seed=3)]
    other = [(png_bytes(im), cap) for im, cap in training_samples(12, seed=4)]
    assert first == again
    assert prefix == first[:5]
    assert all(a != b for a, b in zip(first, other))
    assert all(im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB" for im, _ in training_samples(3))


def test_training_mixture_and_caption_grammar() -> None:
    samples = [training_sample(i, seed=0) for i in range(300)]
    pairs = [s for s in samples if len(s.scene.objects) == 2]
    textured = [s for s in samples if s.scene.objects[0].texture is not None]
    assert 0.17 < len(pairs) / 300 < 0.33 and 0.09 < len(textured) / 300 < 0.22
    typical = [s for s in textured if s.scene.objects[0].texture == TYPICAL_TEXTURE[s.scene.objects[0].shape]]
    assert len(typical) / len(textured) > 0.75
    partial = [s for s in samples if len(shape_words(s.caption)) != len(colour_words(s.caption))]
    assert 0.2 < len(partial) / 300 < 0.4
    phrase = r"a (?:(?:{c}) (?:{s})|(?:{s})|(?:{c}) object)".format(c="|".join(COLOURS), s="|".join(SHAPES))
    for s in pairs:
        left, right = s.scene.objects
        assert left.shape != right.shape and left.colour != right.colour
    for s in samples:
        assert re.fullmatch(rf"{phrase}(?: and {phrase})?", s.caption), s.caption


def test_training_captions_match_the_pixels() -> None:
    for i in range(80):
        sample = training_sample(i, seed=7)
        objects = sample.scene.objects
        parts = halves(sample.image) if len(objects) == 2 else (sample.image,)
        colours, shapes = colour_words(sample.caption), shape_words(sample.caption)
        assert colours or shapes
        if colours:
            assert colours == [nearest_colour(object_pixels(p)) for p in parts], (i, sample.caption)
        if shapes:
            assert shapes == [o.shape for o in objects]
        if len(objects) == 1 and objects[0].texture is None:
            # the drawn silhouette fits the described shape better than any other shape in the same box
            drawn = np.asarray(sample.image, dtype=np.float64)
            drawn = (drawn.max(axis=-1) - drawn.min(axis=-1)) > SATURATION_MIN
            fit = {s: iou(drawn, np.asarray(shape_mask(s, objects[0].box, IMAGE_SIZE)) > 127) for s in SHAPES}
            assert max(fit, key=fit.get) == objects[0].shape, (i, fit)


# ---------------------------------------------------------------- test-set streams


def test_test_streams_are_deterministic_balanced_and_consistent() -> None:
    shape = list(classification_samples("shape", 12, seed=5))
    assert [label for _, label in shape] == list(range(6)) * 2
    again = classification_samples("shape", 12, seed=5)
    assert [png_bytes(im) for im, _ in shape] == [png_bytes(im) for im, _ in again]
    assert png_bytes(shape[0][0]) != png_bytes(next(classification_samples("shape", 1, seed=6))[0])
    for image, label in classification_samples("colour", 12):
        assert nearest_colour(object_pixels(image)) == COLOURS[label]
    assert [label for _, label in classification_samples("colour_shape", 40)] == list(range(36)) + list(range(4))
    conflicts = list(cue_conflict_samples(30))
    assert all(shape != texture for _, shape, texture in conflicts)
    assert len({(shape, texture) for _, shape, texture in conflicts}) == 30  # every pairing once


def test_binding_negative_swaps_the_colours() -> None:
    for image, (true, negative) in binding_samples(10, seed=2):
        c1, c2 = colour_words(true)
        assert negative == true.replace(c1, "@").replace(c2, c1).replace("@", c2) != true
        assert re.fullmatch(r"a \w+ \w+ and a \w+ \w+", true)
        assert [nearest_colour(object_pixels(p)) for p in halves(image)] == [c1, c2]


# ---------------------------------------------------------------- written datasets


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_all(str(tmp_path_factory.mktemp("world")), n_train=10, n_test=14, seed=0)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "binding"])
def test_classification_sets_load_with_clip_benchmark(written: dict[str, str], task: str) -> None:
    dataset = load(task, written[task])
    assert len(dataset.classes) == N_CLASSES[task] and dataset.templates == ["a {c}"]
    rows = list(dataset)
    assert len(rows) == 14
    assert all(tuple(image.shape) == (3, IMAGE_SIZE, IMAGE_SIZE) for image, _ in rows)
    assert [int(label) for _, label in rows] == [label for _, label in classification_samples(task, 14, seed=1)]
    if task == "cue_conflict":
        with open(os.path.join(written[task], "texture_labels.txt")) as file:
            texture_labels = [int(line) for line in file]
        assert texture_labels == [texture for _, _, texture in cue_conflict_samples(14, seed=1)]


def test_binding_set_loads_as_caption_selection(written: dict[str, str]) -> None:
    rows = list(load("binding", written["binding"]))
    assert len(rows) == 14
    expected = [texts for _, texts in binding_samples(14, seed=1)]
    assert [texts for _, texts in rows] == expected
    assert all(tuple(image.shape) == (3, IMAGE_SIZE, IMAGE_SIZE) for image, _ in rows)


def test_training_set_loads_with_captions(written: dict[str, str]) -> None:
    rows = list(load("train", written["train"], split="train"))
    assert [texts for _, texts in rows] == [[caption] for _, caption in training_samples(10, seed=0)]


def test_clip_benchmark_metrics_run_on_written_sets(written: dict[str, str]) -> None:
    """The same dataloader as `clip_benchmark eval` for wds/ datasets, scored by a colour oracle."""
    from clip_benchmark.metrics import image_caption_selection, zeroshot_classification

    def loader(dataset, num_workers: int = 0):
        return torch.utils.data.DataLoader(dataset.batched(4), batch_size=None, shuffle=False, num_workers=num_workers)

    colour = load("colour", written["colour"])
    oracle = ColourOracle(per_half=False)
    # 4 workers, as `clip_benchmark eval` uses by default: every worker must get a shard
    metrics = zeroshot_classification.evaluate(
        oracle, loader(colour, 4), oracle.tokenizer, colour.classes, colour.templates, device="cpu", amp=False
    )
    assert metrics["acc1"] == 1.0
    oracle = ColourOracle(per_half=True)
    metrics = image_caption_selection.evaluate(
        oracle, loader(load("binding", written["binding"])), oracle.tokenizer, device="cpu", amp=False
    )
    assert metrics["text_acc"] == 1.0


def read_shards(root: str, split: str = "test") -> list[bytes]:
    with open(os.path.join(root, split, "nshards.txt")) as file:
        nshards = int(file.read())
    expected_files = [f"{i}.tar" for i in range(nshards)] + ["nshards.txt"]
    assert sorted(os.listdir(os.path.join(root, split))) == sorted(expected_files)
    shards = []
    for i in range(nshards):
        with open(os.path.join(root, split, f"{i}.tar"), "rb") as file:
            shards.append(file.read())
    return shards


def test_written_files_are_byte_identical_and_sharded(tmp_path, monkeypatch) -> None:
    a = write_test_set(str(tmp_path / "a"), "cue_conflict", 10)
    assert read_shards(a) == read_shards(write_test_set(str(tmp_path / "b"), "cue_conflict", 10))
    assert len(read_shards(a)) == writer.MIN_SHARDS
    monkeypatch.setattr(writer, "SHARD_SIZE", 2)
    write_test_set(str(tmp_path / "a"), "cue_conflict", 10)
    assert len(read_shards(a)) == 5
    assert [int(label) for _, label in load("cue_conflict", a)] == [s for _, s, _ in cue_conflict_samples(10)]
    # regenerating fewer samples in place removes the now stale shards (checked by read_shards)
    write_test_set(str(tmp_path / "a"), "cue_conflict", 1)
    assert len(read_shards(a)) == 1
    root = write_training_set(str(tmp_path / "t"), 9)
    assert len(read_shards(root, "train")) == 5
    assert len(list(load("train", root, split="train"))) == 9


def test_cli(tmp_path, capsys) -> None:
    out = str(tmp_path / "cli")
    paths = cli_main(["--out", out, "--n-train", "4", "--n-test", "6", "--seed", "2", "--tasks", "shape", "binding"])
    assert paths == {name: os.path.join(out, name) for name in ("train", "shape", "binding")}
    assert "shape: " in capsys.readouterr().out
    assert len(list(load("shape", paths["shape"]))) == 6
    with pytest.raises(SystemExit):
        cli_main(["--out", out, "--tasks", "nope"])
