"""The probes: shape-bias arithmetic, cue-conflict loaders, binding tasks and their evaluation
through clip_benchmark's own caption-selection metric, and shape-bias runs of CLIP and
diffusion models through the CLI."""
import json
import math
import zlib

import pytest
import torch
from PIL import Image
from torchvision import transforms

from clip_benchmark_diffusion.probes.binding import (
    SUITE_FILE, BindingScene, SceneObject, binding_tasks, caption, read_scenes, swap_attribute, write_binding_suite)
from clip_benchmark_diffusion.probes.caption_selection import CaptionSelectionDataset
from clip_benchmark_diffusion.probes.cue_conflict import GEIRHOS_CLASSES, load_geirhos, load_world
from clip_benchmark_diffusion.probes.shape_bias import cue_decision, shape_bias_metrics

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:WebDataset\(shardshuffle=\.\.\.\) is None:UserWarning"),
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]


# --------------------------------------------------------------------------- shape bias
def test_shape_bias_counts_only_conflicting_images_overall_and_per_class():
    classes = ["cat", "dog", "car"]
    #            shape  texture  prediction  -> decision
    rows = [(0, 1, 0),  # cat shape, dog texture: shape
            (0, 1, 1),  # texture
            (0, 2, 1),  # other (dog): counts for accuracies, not for the bias
            (0, 0, 1),  # shape == texture: excluded everywhere
            (1, 0, 1),  # dog: shape
            (1, 2, 2),  # dog: texture
            (1, 2, 2),  # dog: texture
            (2, 2, 2)]  # excluded
    shapes, textures, predictions = zip(*rows)
    metrics = shape_bias_metrics(predictions, shapes, textures, classes)
    assert metrics["shape_decisions"] == 2 and metrics["texture_decisions"] == 3 and metrics["other_decisions"] == 1
    assert metrics["shape_bias"] == pytest.approx(2 / 5)
    assert metrics["shape_accuracy"] == pytest.approx(2 / 6) and metrics["texture_accuracy"] == pytest.approx(3 / 6)
    assert metrics["conflict_images"] == 6 and metrics["excluded_images"] == 2
    assert set(metrics["per_class"]) == {"cat", "dog"}  # car only appears without conflict
    cat, dog = metrics["per_class"]["cat"], metrics["per_class"]["dog"]
    assert cat["shape_bias"] == pytest.approx(1 / 2) and cat["images"] == 3 and cat["other_decisions"] == 1
    assert dog["shape_bias"] == pytest.approx(1 / 3) and dog["texture_accuracy"] == pytest.approx(2 / 3)
    assert [cue_decision(p, s, t) for s, t, p in rows[:4]] == ["shape", "texture", "other", "excluded"]


def test_shape_bias_is_undefined_without_shape_or_texture_decisions():
    metrics = shape_bias_metrics([2, 2], [0, 1], [1, 0])
    assert math.isnan(metrics["shape_bias"]) and metrics["shape_accuracy"] == 0 and metrics["other_decisions"] == 2
    assert set(metrics["per_class"]) == {"0", "1"}  # no class names: indices
    empty = shape_bias_metrics([0], [0], [0])
    assert empty["conflict_images"] == 0 and empty["excluded_images"] == 1 and math.isnan(empty["shape_bias"])
    with pytest.raises(ValueError):
        shape_bias_metrics([0, 1], [0], [1])


# --------------------------------------------------------------------------- cue-conflict data
def _solid(path, value, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 0, 0)).save(path)


@pytest.fixture(scope="module")
def geirhos_root(tmp_path_factory):
    """A texture-vs-shape checkout in miniature: 2 classes, 5 stimuli (one without conflict)."""
    root = tmp_path_factory.mktemp("texture-vs-shape")
    folder = root / "stimuli" / "style-transfer-preprocessed-512"
    for i, name in enumerate(["cat/cat1-dog2.png", "cat/cat3-cat1.png", "cat/cat10-truck3.png",
                              "dog/dog2-cat1.png", "dog/dog7-knife2.png"]):
        _solid(folder / name, 40 * i)
    (folder / "dog" / "README.txt").write_text("not a stimulus")
    return root


def test_public_cue_conflict_layout_gives_images_shape_and_texture_labels(geirhos_root):
    transform = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])
    dataset = load_geirhos(str(geirhos_root), transform)
    assert dataset.classes == list(GEIRHOS_CLASSES) and len(dataset.classes) == 16
    assert dataset.templates == ["a photo of a {c}."]
    index = GEIRHOS_CLASSES.index
    assert dataset.names == ["cat/cat1-dog2.png", "cat/cat10-truck3.png", "cat/cat3-cat1.png",
                             "dog/dog2-cat1.png", "dog/dog7-knife2.png"]
    assert dataset.targets == [index("cat")] * 3 + [index("dog")] * 2
    assert dataset.texture_labels == [index(c) for c in ("dog", "truck", "cat", "cat", "knife")]
    image, label = dataset[1]
    assert image.shape == (3, 8, 8) and label == index("cat")
    assert image[0, 0, 0].item() == pytest.approx(80 / 255, abs=1e-6)  # cat10-truck3 was written third
    # the stimuli folder itself is accepted too, with custom templates
    same = load_geirhos(str(geirhos_root / "stimuli"), templates=["{c}"])
    assert same.names == dataset.names and same.templates == ["{c}"]


def test_public_layout_rejects_unknown_classes(tmp_path):
    _solid(tmp_path / "zebra" / "zebra1-cat1.png", 0)
    with pytest.raises(ValueError, match="zebra"):
        load_geirhos(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_geirhos(str(tmp_path / "zebra"))


def test_world_cue_conflict_folder_gives_the_same_three_things(tmp_path):
    from clip_benchmark_diffusion.world import cue_conflict_samples, write_test_set

    root = write_test_set(str(tmp_path), "cue_conflict", n=9)
    dataset = load_world(root, transforms.ToTensor())
    expected = list(cue_conflict_samples(9))
    assert dataset.targets == [shape for _, shape, _ in expected]
    assert dataset.texture_labels == [texture for _, _, texture in expected]
    assert all(s != t for s, t in zip(dataset.targets, dataset.texture_labels))
    assert dataset.classes and dataset.templates
    image, _ = dataset[4]
    assert torch.equal(image, transforms.ToTensor()(expected[4][0]))


# --------------------------------------------------------------------------- binding
RED_CUBE, BLUE_SPHERE = SceneObject("large", "red", "cube"), SceneObject("small", "blue", "sphere")


def test_binding_negative_swaps_exactly_one_attribute_between_the_objects():
    objects = (RED_CUBE, BLUE_SPHERE)
    assert caption(objects) == "a large red cube and a small blue sphere"
    assert caption(swap_attribute(objects, "color")) == "a large blue cube and a small red sphere"
    assert caption(swap_attribute(objects, "size")) == "a small red cube and a large blue sphere"
    assert caption(swap_attribute(objects, "shape")) == "a large red sphere and a small blue cube"
    same_colour = (RED_CUBE, SceneObject("small", "red", "sphere"))
    assert swap_attribute(same_colour, "color") is None  # nothing to swap
    colour_only = (RED_CUBE, SceneObject("large", "blue", "cube"))
    assert swap_attribute(colour_only, "color") is None  # swap describes the same two objects


def test_recognition_controls_use_a_value_absent_from_the_image():
    scenes = [BindingScene(f"{i}.png", objects) for i, objects in enumerate([
        (RED_CUBE, BLUE_SPHERE),
        (SceneObject("large", "green", "cylinder"), SceneObject("large", "yellow", "cube"))])]
    tasks = binding_tasks(scenes, seed=3)
    assert set(tasks) == {f"{kind}_{a}" for kind in ("binding", "recognition") for a in ("size", "color", "shape")}
    for name, samples in tasks.items():
        for sample in samples:
            true, negative = sample.captions
            assert true == caption(scenes[int(sample.image[0])].objects) and negative != true
            changed = [(a, b) for a, b in zip(true.split(), negative.split()) if a != b]
            if name.startswith("binding"):
                assert sorted(true.split()) == sorted(negative.split()) and len(changed) == 2
            else:
                assert len(changed) == 1 and changed[0][1] not in true.split()
    assert [s.image for s in tasks["recognition_size"]] == ["1.png"]  # scene 0 shows both sizes
    assert tasks["recognition_size"][0].captions[1].count("small") == 1
    assert [s.image for s in tasks["binding_size"]] == ["0.png"]  # scene 1's sizes are equal
    assert binding_tasks(scenes, seed=3) == tasks  # seeded: the same negatives every time
    assert set(binding_tasks(scenes, attributes=["color"], controls=False)) == {"binding_color"}


def _clevr_folder(root, fmt):
    """Four two-object renders (solid colours: red channel = 10 * index) and a three-object one."""
    scenes = [[RED_CUBE, BLUE_SPHERE],
              [SceneObject("small", "green", "cylinder"), SceneObject("large", "green", "cube")],
              [RED_CUBE, SceneObject("large", "blue", "cube")],
              [SceneObject("small", "yellow", "sphere"), SceneObject("large", "red", "cylinder")],
              [RED_CUBE, BLUE_SPHERE, RED_CUBE]]
    for i in range(len(scenes)):
        _solid(root / "images" / f"CLEVR_{i:06d}.png", 10 * i, size=(12, 12))
    if fmt == "json":
        entries = [{"image_filename": f"CLEVR_{i:06d}.png", "objects": [
            {"size": o.size, "color": o.color, "shape": o.shape, "material": "rubber"} for o in objects]}
            for i, objects in enumerate(scenes)]
        (root / "CLEVR_val_scenes.json").write_text(json.dumps({"info": {}, "scenes": entries}))
    else:
        lines = ["image,size1,color1,shape1,size2,color2,shape2"] + [
            ",".join([f"CLEVR_{i:06d}.png"] + [getattr(o, a) for o in objects for a in ("size", "color", "shape")])
            for i, objects in enumerate(scenes[:4])]
        (root / "attributes.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_render_folders_are_read_from_clevr_json_or_csv(tmp_path, fmt):
    scenes = read_scenes(str(_clevr_folder(tmp_path, fmt)))
    assert len(scenes) == 4  # the three-object scene is skipped
    assert scenes[0].objects == (RED_CUBE, BLUE_SPHERE) and scenes[3].image.endswith("CLEVR_000003.png")


class CaptionTokenizer:
    """Texts -> ids into a growing table (the fake model reads the texts back)."""

    def __init__(self):
        self.texts = []

    def __call__(self, texts):
        ids = []
        for text in texts:
            if text not in self.texts:
                self.texts.append(text)
            ids.append(self.texts.index(text))
        return torch.tensor(ids)


class FakeClip(torch.nn.Module):
    """CLIP-like: each text has a fixed random embedding; an image 'reads' a caption chosen by
    its red channel (index = red / 10) and embeds it, so its match is known in advance."""

    def __init__(self, tokenizer, reads):
        super().__init__()
        self.tokenizer, self.reads = tokenizer, reads

    @staticmethod
    def _embed(text):
        return torch.randn(64, generator=torch.Generator().manual_seed(zlib.crc32(text.encode())))

    def encode_text(self, ids):
        return torch.stack([self._embed(self.tokenizer.texts[int(i)]) for i in ids])

    def encode_image(self, images):
        return torch.stack([self._embed(self.reads[round(float(image[0, 0, 0]) * 255 / 10)]) for image in images])


def test_binding_tasks_rank_captions_through_clip_benchmark_caption_selection(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import image_caption_selection

    scenes = read_scenes(str(_clevr_folder(tmp_path / "renders", "json")))
    folders = write_binding_suite(scenes, str(tmp_path / "suite"), attributes=["color"])
    assert (tmp_path / "suite" / SUITE_FILE).read_text().split() == ["wds/binding_color", "wds/recognition_color"]
    samples = binding_tasks(scenes, attributes=["color"])["binding_color"]
    assert [s.image.rsplit("_", 1)[1] for s in samples] == ["000000.png", "000003.png"]  # scenes 1, 2 skipped
    # the model picks the true caption for render 0 and the swapped one for render 3
    reads = {0: samples[0].captions[0], 3: samples[1].captions[1]}
    tokenizer = CaptionTokenizer()
    model = FakeClip(tokenizer, reads)

    wds = build_dataset("wds/binding_color", root=folders["binding_color"], transform=transforms.ToTensor(),
                        task="image_caption_selection")
    loader = torch.utils.data.DataLoader(wds.batched(2), batch_size=None, num_workers=0)
    metrics = image_caption_selection.evaluate(model, loader, tokenizer, "cpu", amp=False)
    assert metrics["text_acc"] == pytest.approx(0.5) and metrics["acc"] == pytest.approx(0.5)

    in_memory = torch.utils.data.DataLoader(CaptionSelectionDataset(samples, transforms.ToTensor()), batch_size=2,
                                            collate_fn=image_captions_collate_fn)
    assert image_caption_selection.evaluate(model, in_memory, tokenizer, "cpu", amp=False) == metrics


# --------------------------------------------------------------------------- shape-bias runs
TINY_OPEN_CLIP_CONFIG = {
    "model_cfg": {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "preprocess_cfg": {},
}


def _predictions(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _metrics_from_predictions(rows):
    index = GEIRHOS_CLASSES.index
    return shape_bias_metrics([index(r["prediction"]) for r in rows], [index(r["shape"]) for r in rows],
                              [index(r["texture"]) for r in rows], GEIRHOS_CLASSES)


def test_shape_bias_cli_runs_a_clip_model_through_clip_benchmark(geirhos_root, tmp_path, capsys):
    from clip_benchmark_diffusion.probes.__main__ import main

    model_dir = tmp_path / "tiny-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    output = tmp_path / "results" / "clip.json"
    assert main(["shape-bias", "--model", f"local-dir:{model_dir}", "--pretrained", "", "--dataset-root",
                 str(geirhos_root), "--output", str(output), "--batch-size", "2", "--device", "cpu"]) == 0
    result = json.loads(output.read_text())
    assert list(result) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert result["dataset"] == "cue_conflict_geirhos" and result["task"] == "shape_bias"
    metrics = result["metrics"]
    assert metrics["conflict_images"] == 4 and metrics["excluded_images"] == 1
    rows = _predictions(tmp_path / "results" / "clip.predictions.jsonl")
    assert [r["decision"] == "excluded" for r in rows] == [False, False, True, False, False]
    assert json.dumps(_metrics_from_predictions(rows)) == json.dumps(metrics)
    assert not list((tmp_path / "results").glob("*.diffusion.jsonl"))


def test_shape_bias_cli_runs_a_diffusion_model_with_its_flags(geirhos_root, tiny_epsilon_pipeline, tmp_path):
    from clip_benchmark_diffusion.probes.__main__ import main
    from clip_benchmark_diffusion.records import read_records

    output = tmp_path / "{dataset}_{model}.json"
    assert main(["shape-bias", "--model", "sd-diffusion", "--pretrained", tiny_epsilon_pipeline, "--dataset-root",
                 str(geirhos_root), "--output", str(output), "--device", "cpu", "--template", "a {c}",
                 "--diffusion_draws", "2", "--diffusion_strategy", "fixed", "--diffusion_no_progress", "--seed",
                 "4"]) == 0
    result = json.loads((tmp_path / "cue_conflict_geirhos_sd-diffusion.json").read_text())
    records = read_records(str(tmp_path / "cue_conflict_geirhos_sd-diffusion.diffusion.jsonl"))
    header = records["header"]
    assert header["settings"]["draws"] == 2 and header["settings"]["seed"] == 4
    assert header["run"]["probe"] == "shape_bias" and header["candidates"][0] == ["a airplane"]
    assert all(image["calls"] == 16 * 2 for image in records["images"])  # 16 classes x 2 draws
    rows = _predictions(tmp_path / "cue_conflict_geirhos_sd-diffusion.predictions.jsonl")
    index = GEIRHOS_CLASSES.index
    assert records["summary"]["labels"] == [index(r["shape"]) for r in rows]
    # the logits' argmax is the scorer's decision
    assert [image["prediction"] for image in records["images"]] == [index(r["prediction"]) for r in rows]
    assert json.dumps(_metrics_from_predictions(rows)) == json.dumps(result["metrics"])
