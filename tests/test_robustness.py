"""World-C corruptions (deterministic, at their documented strength), the ImageNet-C / CIFAR-10-C
folder loaders, ImageNet-C's mCE, and the robustness probe on CLIP and diffusion models."""
import filecmp
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from clip_benchmark_diffusion.probes.__main__ import main as probes_main
from clip_benchmark_diffusion.probes.robustness import (corruption_errors, detect_layout, find_corruption_sets,
                                                        summarise)
from clip_benchmark_diffusion.world.corruptions import (CORRUPTIONS, DISTRACTOR_INDEX_OFFSET, EXTRA_CORRUPTIONS,
                                                        OCCLUDER_GREY, SEVERITIES, corrupt, corruption_rng,
                                                        distractor_image, severity_parameter, write_corrupted_set)
from clip_benchmark_diffusion.world.scenes import eval_sample, eval_samples


def _rng(index=0):
    return corruption_rng(1, "test", "any", index)


#: what `overlay` blends in (the other corruptions ignore it)
DISTRACTOR = Image.new("RGB", (32, 32), (30, 200, 60))


def _array(image):
    return np.asarray(image, dtype=np.float64)


def test_corruptions_are_deterministic_and_keep_their_pattern_across_severities():
    image = next(eval_samples("shape", 1)).image
    for corruption in CORRUPTIONS + EXTRA_CORRUPTIONS:
        first = corrupt(image, corruption, 3, _rng(), DISTRACTOR)
        assert np.array_equal(_array(first), _array(corrupt(image, corruption, 3, _rng(), DISTRACTOR))), corruption
        assert first.size == image.size and first.mode == "RGB"
        assert not np.array_equal(_array(first), _array(image)), f"{corruption} changed nothing"
    other = corrupt(image, "gaussian_noise", 3, _rng(index=1))
    assert not np.array_equal(_array(other), _array(corrupt(image, "gaussian_noise", 3, _rng())))
    # the occluder sits at the same place at every severity (only its size grows)
    red = Image.new("RGB", (32, 32), (220, 30, 30))
    masks = [np.all(_array(corrupt(red, "occlusion", s, _rng())) == OCCLUDER_GREY, axis=2) for s in SEVERITIES]
    assert all(np.any(a & b) for a, b in zip(masks, masks[1:]))


def test_damage_grows_with_severity_for_every_corruption():
    images = [s.image for s in eval_samples("shape", 6)]
    for corruption in CORRUPTIONS + EXTRA_CORRUPTIONS:
        damage = [np.mean([np.abs(_array(corrupt(im, corruption, s, _rng(i), DISTRACTOR)) - _array(im)).mean()
                           for i, im in enumerate(images)]) for s in SEVERITIES]
        assert all(a < b for a, b in zip(damage, damage[1:])), (corruption, damage)


def test_gaussian_noise_has_the_documented_standard_deviation():
    grey = Image.new("RGB", (96, 96), (128, 128, 128))
    for severity in (1, 2, 3):  # higher severities clip at 0 and 255
        residual = _array(corrupt(grey, "gaussian_noise", severity, _rng())) - 128
        assert residual.std() == pytest.approx(severity_parameter("gaussian_noise", severity) * 255, rel=0.04)
        assert abs(residual.mean()) < 1.5


def test_blur_spreads_a_line_by_the_documented_sigma():
    line = np.zeros((33, 33, 3), dtype=np.uint8)
    line[:, 16] = 255
    for severity in (2, 3, 4, 5):
        profile = _array(corrupt(Image.fromarray(line), "gaussian_blur", severity, _rng()))[16, :, 0]
        offsets = np.arange(33) - 16
        sigma = math.sqrt((profile * offsets ** 2).sum() / profile.sum())
        assert sigma == pytest.approx(severity_parameter("gaussian_blur", severity), rel=0.08)


def test_contrast_keeps_the_documented_share_of_the_deviation_from_the_mean():
    ramp = np.tile(np.linspace(20, 235, 64)[None, :, None], (64, 1, 3)).round().astype(np.uint8)
    for severity in SEVERITIES:
        out = _array(corrupt(Image.fromarray(ramp), "contrast", severity, _rng()))
        ratio = out.std() / ramp.std()
        assert ratio == pytest.approx(severity_parameter("contrast", severity), abs=0.01)


def test_pixelate_leaves_the_documented_number_of_blocks_per_side():
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    for severity in SEVERITIES:
        out = _array(corrupt(Image.fromarray(noise), "pixelate", severity, _rng()))
        columns = 1 + int(np.any(out[:, 1:] != out[:, :-1], axis=(0, 2)).sum())
        rows = 1 + int(np.any(out[1:] != out[:-1], axis=(1, 2)).sum())
        assert columns == rows == round(32 * severity_parameter("pixelate", severity))


def test_occlusion_covers_the_documented_area():
    red = Image.new("RGB", (32, 32), (220, 30, 30))
    for severity in SEVERITIES:
        for index in range(5):
            out = _array(corrupt(red, "occlusion", severity, _rng(index)))
            covered = np.all(out == OCCLUDER_GREY, axis=2).mean()
            assert covered == pytest.approx(severity_parameter("occlusion", severity), abs=0.02)


def test_overlay_blends_the_next_class_at_the_documented_opacity_and_needs_its_distractor():
    image = next(eval_samples("shape", 1)).image
    for severity in SEVERITIES:
        alpha = severity_parameter("overlay", severity)
        out = _array(corrupt(image, "overlay", severity, _rng(), DISTRACTOR))
        assert np.abs(out - ((1 - alpha) * _array(image) + alpha * _array(DISTRACTOR))).max() <= 1  # rounding
    assert severity_parameter("overlay", 5) < 0.5  # the true class still dominates the pixels
    assert "overlay" not in CORRUPTIONS  # an extra: not in the default set nor its mCE
    with pytest.raises(ValueError, match="distractor"):
        corrupt(image, "overlay", 1, _rng())
    # world-C's distractor: the next class, a fresh rendering (not one of the test images), severity-independent
    clean = list(eval_samples("colour_shape", 40))
    for index in (0, 5, 35):
        first = distractor_image("colour_shape", index, 1, corruption_rng(1, "colour_shape", "overlay", index))
        again = distractor_image("colour_shape", index, 1, corruption_rng(1, "colour_shape", "overlay", index))
        assert np.array_equal(_array(first), _array(again))
        assert not any(np.array_equal(_array(first), _array(sample.image)) for sample in clean)
    m_rng = corruption_rng(1, "colour_shape", "overlay", 35)
    m = int(m_rng.integers(DISTRACTOR_INDEX_OFFSET, 2 * DISTRACTOR_INDEX_OFFSET))
    assert eval_sample("colour_shape", 35 + 1 + 36 * m).label == (clean[35].label + 1) % 36


def test_unknown_corruption_or_severity_is_refused():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(image, "fog", 1, _rng())
    with pytest.raises(ValueError, match="severity"):
        corrupt(image, "jpeg", 6, _rng())


def test_world_c_folders_are_clip_benchmark_sets_of_the_corrupted_clean_images(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    root = write_corrupted_set(str(tmp_path / "a"), "shape", "jpeg", 4, n=5)
    again = write_corrupted_set(str(tmp_path / "b"), "shape", "jpeg", 4, n=5)
    assert root.endswith(os.path.join("shape", "jpeg", "4"))
    assert all(filecmp.cmp(os.path.join(root, "test", f), os.path.join(again, "test", f), shallow=False)
               for f in os.listdir(os.path.join(root, "test")))
    dataset = build_dataset("wds/shape", root=root, split="test", transform=_array)
    assert dataset.classes[:2] == ["circle", "square"] and dataset.templates == ["a {c}"]
    loaded = list(dataset)  # shards in order, one reader: key order
    clean = list(eval_samples("shape", 5))
    assert len(loaded) == 5
    for index, (image, label) in enumerate(loaded):
        assert label == clean[index].label
        expected = corrupt(clean[index].image, "jpeg", 4, corruption_rng(1, "shape", "jpeg", index))
        assert np.array_equal(image, _array(expected))
    assert json.load(open(os.path.join(root, "info.json")))["parameter"] == 10


def _imagenet_c(root, wnids=("n01440764", "n01443537"), images=2):
    """A tiny ImageNet-C tree: <root>/<corruption>/<severity>/<wnid>/<n>.JPEG."""
    for corruption in ("fog", "snow"):
        for severity in (1, 2):
            for wnid in wnids:
                folder = root / corruption / str(severity) / wnid
                folder.mkdir(parents=True)
                for i in range(images):
                    Image.new("RGB", (12, 10), (40 * i, 50, 60)).save(folder / f"ILSVRC2012_val_{i:08d}.JPEG")
    return str(root)


def test_imagenet_c_layout_loader_gives_imagenet_labels_names_and_templates(tmp_path):
    root = _imagenet_c(tmp_path / "imagenet-c", wnids=("n01443537", "n15075141"))
    assert detect_layout(root) == "imagenet-c"
    sets = find_corruption_sets(root)
    assert [(s.corruption, s.severity) for s in sets] == [("fog", 1), ("fog", 2), ("snow", 1), ("snow", 2)]
    dataset = sets[3].load(lambda image: image.size)
    assert len(dataset) == 4 and len(dataset.classes) == 1000
    assert dataset.classes[1] == "goldfish" and dataset.classes[999] == "toilet paper"
    assert "{c}" in dataset.templates[0]
    assert sorted({label for _, label in dataset}) == [1, 999]  # ImageNet indices, not folder indices
    assert dataset[0][0] == (12, 10)


def test_cifar10_c_layout_loader_splits_the_five_severities(tmp_path):
    images = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(10)  # pixel (0, 0) tells which image it is
    np.save(tmp_path / "gaussian_noise.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(10) % 10)
    assert detect_layout(str(tmp_path)) == "cifar10-c"
    sets = find_corruption_sets(str(tmp_path))
    assert [(s.corruption, s.severity) for s in sets] == [("gaussian_noise", s) for s in SEVERITIES]
    dataset = sets[2].load(lambda image: np.asarray(image)[0, 0, 0])
    assert [dataset[i] for i in range(len(dataset))] == [(4, 4), (5, 5)]
    assert dataset.classes[:2] == ["airplane", "automobile"]


def test_mce_matches_the_imagenet_c_definition_by_hand():
    errors = {("blur", 1): 0.2, ("blur", 2): 0.4, ("noise", 1): 0.1, ("noise", 2): 0.5}
    baseline = {("blur", 1): 0.4, ("blur", 2): 0.6, ("noise", 1): 0.3, ("noise", 2): 0.3}
    summary = corruption_errors(errors, baseline, clean=0.1, baseline_clean=0.2)
    assert summary["CE"] == pytest.approx({"blur": 0.6 / 1.0, "noise": 0.6 / 0.6})
    assert summary["mCE"] == pytest.approx((0.6 + 1.0) / 2)
    # relative: sum(E - E_clean) / sum(E_base - E_base_clean)
    assert summary["relative_CE"] == pytest.approx({"blur": (0.1 + 0.3) / (0.2 + 0.4), "noise": 0.4 / 0.2})
    assert summary["relative_mCE"] == pytest.approx((0.4 / 0.6 + 2.0) / 2)
    metrics = summarise({("blur", 1): np.array([1, 0]), ("blur", 2): np.array([0, 0]),
                         ("noise", 1): np.array([1, 1]), ("noise", 2): np.array([1, 0]), ("clean", 0): np.array([1, 1])})
    assert metrics["acc_per_severity"] == {"1": 0.75, "2": 0.25}
    assert metrics["mean_acc"] == 0.5 and metrics["clean_acc"] == 1.0 and metrics["clean_images"] == 2
    assert metrics["images"] == 8


def test_probe_runs_clip_and_diffusion_side_by_side_and_records_every_set(tmp_path, tiny_epsilon_pipeline, capsys):
    from clip_benchmark_diffusion.weighting import accuracy, load_draw_errors

    for corruption, severity in (("contrast", 5), ("pixelate", 2)):
        write_corrupted_set(str(tmp_path / "world_c"), "shape", corruption, severity, n=4)
    out = tmp_path / "results"
    code = probes_main(["robustness", "--model", "ref-world-clip", "--pretrained", "ref-world",
                        "--model", "sd-diffusion", "--pretrained", tiny_epsilon_pipeline,
                        "--root", str(tmp_path / "world_c" / "shape"), "--out", str(out), "--diffusion_draws", "4",
                        "--diffusion_strategy", "fixed", "--diffusion_no_progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| 2 |" in printed and "| 5 |" in printed and "mCE (baseline ref-world-clip ref-world)" in printed
    clip = json.load(open(out / "shape_c_ref-world-clip_ref-world.json"))
    diffusion_json = [p for p in os.listdir(out) if p.startswith("shape_c_sd-diffusion") and p.endswith(".json")]
    diffusion = json.load(open(out / diffusion_json[0]))
    assert clip["metrics"]["mCE"] == pytest.approx(1.0)  # the baseline against itself
    assert set(diffusion["metrics"]["acc"]) == {"contrast/5", "pixelate/2"}
    assert diffusion["task"] == "corruption_robustness" and diffusion["metrics"]["images"] == 8
    # one record per set; re-weighting its errors by SNR(t) reproduces the run's own (epsilon) decisions
    stem = diffusion_json[0][len("shape_c_"):-len(".json")]
    for key, acc in diffusion["metrics"]["acc"].items():
        corruption, severity = key.split("/")
        data = load_draw_errors(str(out / f"{stem}_{corruption}_{severity}.diffusion.jsonl"))
        assert data.errors.shape == (4, 6, 4)
        assert accuracy(data, "snr").mean() == pytest.approx(acc)
    predictions = [json.loads(line) for line in open(out / "shape_c_ref-world-clip_ref-world.predictions.jsonl")]
    assert len(predictions) == 8 and {p["corruption"] for p in predictions} == {"contrast", "pixelate"}
