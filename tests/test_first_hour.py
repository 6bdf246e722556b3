"""A new user's first hour: their own images, a console that says what happens, one-line mistakes, help.

The runs use the shipped reference diffusion model (`--pretrained ref-world`) through the real
`clip_benchmark` console script, on a handful of images converted by `folder-to-wds`.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clip_benchmark_diffusion.records import read_records

BIN = os.path.dirname(sys.executable)
CLIP_BENCHMARK = os.path.join(BIN, "clip_benchmark")
SHAPES = ("circle", "square", "triangle")


def _cli(args, cwd, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([CLIP_BENCHMARK] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          **kwargs)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """SRC/<class>/*.png|jpg: the reference world's shapes, as a user's folder of class subfolders."""
    from clip_benchmark_diffusion.world import write_test_set
    import webdataset as wds

    root = tmp_path_factory.mktemp("own")
    world = write_test_set(str(root / "world"), "shape", 12)
    classes = open(os.path.join(world, "classnames.txt")).read().split()
    source = root / "photos"
    shards = int(open(os.path.join(world, "test", "nshards.txt")).read())
    for shard in range(shards):
        for sample in wds.WebDataset(os.path.join(world, "test", f"{shard}.tar"), shardshuffle=False).decode("pil"):
            name = classes[int(sample["cls"])]
            if name not in SHAPES:
                continue
            (source / name).mkdir(parents=True, exist_ok=True)
            image = next(sample[k] for k in ("png", "jpg", "webp") if k in sample)
            image.save(source / name / f"{sample['__key__']}.{'jpg' if len(os.listdir(source / name)) % 2 else 'png'}")
    return source


def test_folder_to_wds_writes_what_clip_benchmark_reads(image_folder, tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    from clip_benchmark_diffusion.__main__ import main

    (image_folder / "notes.txt").write_text("not an image")
    assert main(["folder-to-wds", str(image_folder), str(tmp_path / "mine"), "--template", "a {c}.",
                 "--template", "a drawing of a {c}."]) == 0
    assert (tmp_path / "mine" / "test" / "nshards.txt").read_text().strip() == "1"
    assert (tmp_path / "mine" / "classnames.txt").read_text().split() == sorted(SHAPES)
    dataset = build_dataset("wds/mine", root=str(tmp_path / "mine"), transform=lambda image: image.size)
    assert dataset.classes == sorted(SHAPES) and dataset.templates == ["a {c}.", "a drawing of a {c}."]
    samples = list(dataset)
    expected = [(label, len(os.listdir(image_folder / name))) for label, name in enumerate(sorted(SHAPES))]
    assert [(label, sum(1 for _, l in samples if l == label)) for label, _ in expected] == expected
    # a second conversion into the same folder is refused, --overwrite replaces it
    assert main(["folder-to-wds", str(image_folder), str(tmp_path / "mine")]) == 2
    assert main(["folder-to-wds", str(image_folder), str(tmp_path / "mine"), "--overwrite", "--shard-size", "2"]) == 0
    assert int((tmp_path / "mine" / "test" / "nshards.txt").read_text()) == -(-len(samples) // 2)


def test_folder_to_wds_refuses_a_folder_without_class_subfolders(tmp_path, capsys):
    from clip_benchmark_diffusion.__main__ import main

    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype="uint8")).save(tmp_path / "flat" / "a.png")
    assert main(["folder-to-wds", str(tmp_path / "flat"), str(tmp_path / "out")]) == 2
    assert "class subfolder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def one_shard_wds(image_folder, tmp_path_factory):
    from clip_benchmark_diffusion.datasets import folder_to_wds

    root = str(tmp_path_factory.mktemp("wds") / "shapes")
    folder_to_wds(str(image_folder), root, templates=["a {c}"])
    return root


FAST = ["--diffusion_strategy", "fixed", "--diffusion_draws", "4"]


def test_quick_look_then_full_run_on_one_shard_with_default_workers(one_shard_wds, tmp_path):
    """A one-shard webdataset with clip_benchmark's default 4 workers used to score every image and
    then crash ("No samples found ... fewer shards than workers") without a result JSON."""
    base = ["eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--dataset", "wds/shapes",
            "--dataset_root", one_shard_wds, "--output", "out/{dataset}.json", *FAST]
    (tmp_path / "out").mkdir()
    quick = _cli(base + ["--diffusion_limit", "2"], tmp_path)
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert not (tmp_path / "out" / "shapes.json").exists()  # a quick look is not a result
    assert len(read_records(str(tmp_path / "out" / "shapes.diffusion.jsonl"))["images"]) == 2
    assert "quick look at the first 2 images" in quick.stderr.strip().splitlines()[-1]

    full = _cli(base, tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    images = int(sum(1 for _ in open(os.path.join(one_shard_wds, "classnames.txt"))) and
                 len(read_records(str(tmp_path / "out" / "shapes.diffusion.jsonl"))["images"]))
    metrics = json.loads((tmp_path / "out" / "shapes.json").read_text())["metrics"]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"clip_benchmark_diffusion: acc1 {100 * metrics['acc1']:.1f}% [")
    assert f"on {images} images ({images - 2} scored now, 2 reused)" in last and "result: out/shapes.json" in last
    # 3 classes x 4 draws: every scored image costs 12 calls, the reused ones are not counted as 0
    assert "12.0 per scored image" in last
    # the bar advanced image by image and counted the reused ones; no third-party noise
    bar = full.stderr.replace("\r", "\n")
    assert f"{images}/{images}" in bar and "2 reused" in bar
    for noise in ("shardshuffle", "worker processes in total", "Loading weights", "Traceback"):
        assert noise not in full.stderr


def test_ctrl_c_ends_with_one_line_exit_130_and_keeps_the_scored_images(one_shard_wds, tmp_path):
    record = tmp_path / "run.diffusion.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [CLIP_BENCHMARK, "eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--dataset", "wds/shapes",
         "--dataset_root", one_shard_wds, "--output", "run.json", "--batch_size", "64",
         "--diffusion_strategy", "fixed", "--diffusion_draws", "64"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell without job control starts background commands with SIGINT ignored; a terminal's is not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if record.exists() and len(read_records(str(record))["images"]) >= 1:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    saved = len(read_records(str(record))["images"])
    last = stderr.strip().splitlines()[-1]
    assert saved >= 1 and last.startswith(f"clip_benchmark_diffusion: interrupted (Ctrl-C): {saved} images are saved "
                                          f"in {record.name}") and "rerun the same command to resume" in last
    assert not (tmp_path / "run.json").exists()


# --------------------------------------------------------------------------- one-line mistakes
def _one_line(args, cwd, capsys, monkeypatch):
    """Run `python -m clip_benchmark_diffusion ARGS` in this process; the one error line it ends with."""
    from clip_benchmark_diffusion.__main__ import main

    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert stop.value.code == 2 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("clip_benchmark_diffusion: error:"), err
    return lines[0]


def _loading_forbidden(monkeypatch):
    """Any model load fails the test (the registration's own entries are replaced only for this test)."""
    import clip_benchmark.models

    from clip_benchmark_diffusion.registration import register

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was reported")

    register()  # first, so that its registry entry is the real loader, which the monkeypatch restores
    for model_type in ("open_clip", "diffusion"):
        monkeypatch.setitem(clip_benchmark.models.TYPE2FUNC, model_type, refuse)


def test_a_model_name_close_to_the_plugins_gets_a_suggestion(tmp_path, capsys, monkeypatch):
    _loading_forbidden(monkeypatch)
    line = _one_line(["eval", "--model", "sd-diffuson", "--pretrained", "ref-world", "--dataset", "cifar10"],
                     tmp_path, capsys, monkeypatch)
    assert "--model sd-diffuson: no such model; did you mean --model sd-diffusion?" in line


def test_abbreviated_diffusion_flags_are_refused_with_the_full_name(tmp_path, capsys, monkeypatch):
    _loading_forbidden(monkeypatch)
    line = _one_line(["eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--diffusion_draw", "8"],
                     tmp_path, capsys, monkeypatch)
    assert "--diffusion_draw is not a flag (flags are not abbreviated); did you mean --diffusion_draws?" in line
    line = _one_line(["eval", "--model", "sd-diffusion", "--diffusion_stratgy=fixed"], tmp_path, capsys, monkeypatch)
    assert "did you mean --diffusion_strategy?" in line


@pytest.mark.parametrize("dataset, extra, expected", [
    ("cifar11", [], "--dataset cifar11: clip_benchmark has no such dataset; did you mean cifar10"),
    ("wds/nonexistent", ["--dataset_root", "nowhere"], "--dataset wds/nonexistent: --dataset_root nowhere: no "
                                                       "test/nshards.txt there"),
    ("wds/shapes", [], "no --dataset_root given: no test/nshards.txt there; pass --dataset_root DIR"),
    ("cifar10", [], "--dataset cifar10: no --dataset_root given, so clip_benchmark would create ./root"),
])
def test_dataset_mistakes_are_one_line_before_the_model_loads(dataset, extra, expected, tmp_path, capsys,
                                                              monkeypatch):
    _loading_forbidden(monkeypatch)
    line = _one_line(["eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--dataset", dataset, *extra],
                     tmp_path, capsys, monkeypatch)
    assert expected in line
    assert not (tmp_path / "root").exists() and not list(tmp_path.iterdir())  # nothing created, no .lock


def test_a_folder_as_dataset_points_to_the_converter(image_folder, tmp_path, capsys, monkeypatch):
    _loading_forbidden(monkeypatch)
    line = _one_line(["eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--dataset", str(image_folder)],
                     tmp_path, capsys, monkeypatch)
    assert "folder-to-wds" in line and "--dataset wds/photos" in line


# --------------------------------------------------------------------------- help
def test_eval_help_has_one_diffusion_group_with_a_line_and_default_for_every_flag(capsys):
    from clip_benchmark_diffusion.__main__ import main
    from clip_benchmark_diffusion.integration.flags import diffusion_argument_parser

    with pytest.raises(SystemExit) as stop:
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.count("diffusion classifier (clip-benchmark-diffusion") == 1
    assert "--dataset_root" in out and "--diffusion_draws DIFFUSION_DRAWS" in out
    for action in diffusion_argument_parser()._actions:
        for flag in action.option_strings:
            assert flag in out
        assert action.help, f"{action.option_strings} has no help line"
        if action.default not in (None, False):
            assert "default" in action.help, f"{action.option_strings} does not show its default"


def test_module_help_lists_every_command(capsys):
    from clip_benchmark_diffusion.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("eval", "build", "demo", "report", "probes", "world", "weighting", "folder-to-wds"):
        assert f"\n  {command} " in out
    assert main(["reprot"]) == 2 and "did you mean report?" in capsys.readouterr().err


# --------------------------------------------------------------------------- the bar, unit level
def test_progress_bar_moves_per_image_and_counts_calls_over_scored_images_only(tmp_path):
    from clip_benchmark.metrics import zeroshot_classification

    from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
    from clip_benchmark_diffusion.scorer import DiffusionScorer
    from clip_benchmark_diffusion.settings import ScorerSettings
    from fake_backend import FakeBackend
    from test_adapter import ListLoader

    classes, templates = ["cat", "dog", "bird"], ["a {c}."]
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    record = str(tmp_path / "run.diffusion.jsonl")

    def run(count):
        tokenizer = PromptTokenizer()
        scorer = DiffusionScorer(FakeBackend(), ScorerSettings(strategy="fixed", draws=2))
        model = DiffusionZeroShotModel(scorer, tokenizer, record_path=record, show_progress=True)
        positions = []
        original_tick = model._tick
        model._tick = lambda n: (original_tick(n), positions.append(model._progress.n))
        classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, classes, templates, "cpu")
        zeroshot_classification.run_classification(model, classifier, ListLoader(images[:count], targets[:count],
                                                                                 classes, batch_size=4), "cpu")
        model.finish()
        return model, positions

    first, positions = run(3)
    assert positions[-3:] == [1, 2, 3]  # one step per image inside a batch of 3
    second, positions = run(6)
    assert second.images_reused == 3 and second.images_scored == 3 and positions[-3:] == [4, 5, 6]
    assert second.calls / second.images_scored == first.calls / first.images_scored == 3 * 2


# --------------------------------------------------------------------------- the report on a phone
@pytest.fixture(scope="module")
def phone_report(tmp_path_factory):
    """CLIP without per-image predictions, a diffusion model with records (adaptive: few draws spent),
    shape bias with a class at 1.0 for both models."""
    from test_report import CLIP, SD, _per_class, _result

    from clip_benchmark_diffusion.report.__main__ import main as report_main

    folder = tmp_path_factory.mktemp("phone_results")
    accuracy = {"acc5": 1.0, "mean_per_class_recall": 0.5}
    _result(folder, "shape_clip", CLIP, "wds/shape", "zeroshot_classification", {"acc1": 0.75, **accuracy})
    _result(folder, "shape_sd", SD, "wds/shape", "zeroshot_classification", {"acc1": 0.5, **accuracy})
    run = {"dataset": "wds/shape", "pretrained": SD[1], "task": "zeroshot_classification", "model_name": SD[0]}
    lines = [{"type": "header", "settings": {"draws": 64, "strategy": "ttest"}, "model": {}, "run": run}]
    lines += [{"type": "image", "index": i, "prediction": p, "ranking": [p], "errors": [], "calls": 6 * d,
               "draws": [d, 2, 2]} for i, (p, d) in enumerate(zip([0, 1, 0, 0], [4, 6, 8, 64]))]
    lines.append({"type": "summary", "labels": [0, 1, 2, 2]})
    (folder / "shape_sd.diffusion.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    for name, model, bias in (("bias_clip", CLIP, 0.25), ("bias_sd", SD, 0.75)):
        _result(folder, name, model, "cue_conflict_geirhos", "shape_bias",
                {"shape_bias": bias, "shape_accuracy": bias / 2, "texture_accuracy": (1 - bias) / 2,
                 "conflict_images": 8, "per_class": _per_class({"cat": 1.0, "dog": 1 - bias})})
    out = tmp_path_factory.mktemp("phone_report")
    assert report_main([str(folder), "--out", str(out)]) == 0
    return folder, out


def test_report_html_has_a_viewport_tag_and_every_table_scrolls(phone_report):
    _, out = phone_report
    page = (out / "report.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count("<table>") == page.count("<div class=table-scroll>\n<table>") >= 2
    assert ".table-scroll { overflow-x: auto;" in page
    markdown = (out / "report.md").read_text()
    # CLIP's result has no per-image predictions: the report says so, and what to rerun, in one line
    assert "No interval or paired test for ViT-B-32 openai on wds/shape" in markdown and "Rerun that" in markdown
    # the strategy column shows what was spent (mean draws of the decided class), not the maximum
    assert "ttest, 20.5 draws (max 64)" in markdown


def test_report_figures_use_one_colour_per_model_and_draw_markers_whole(phone_report, monkeypatch):
    from clip_benchmark_diffusion.report import plots
    from clip_benchmark_diffusion.report.collect import read_results

    folder, _ = phone_report
    results = read_results(str(folder))
    palette = plots.model_palette(r.model_fullname for r in results)
    figures = []
    monkeypatch.setattr(plots, "_png", lambda figure: figures.append(figure) or b"")
    plots.accuracy_plot(results, palette)
    plots.shape_bias_plot(results, palette)
    bars, bias = figures
    bar_colours = {container.get_label(): container.patches[0].get_facecolor()[:3]
                   for container in bars.axes[0].containers if hasattr(container, "patches")}
    markers = [c for c in bias.axes[0].collections if c.get_label() and not c.get_label().startswith("_")]
    marker_colours = {c.get_label().split(" (")[0]: tuple(c.get_facecolor()[0][:3]) for c in markers}
    assert set(bar_colours) == set(marker_colours) == {"ViT-B-32 openai", "sd-diffusion sd2-base"}
    for model in bar_colours:
        assert tuple(bar_colours[model]) == pytest.approx(tuple(palette[model][:3]))
        assert marker_colours[model] == pytest.approx(tuple(palette[model][:3]))
    # shape bias 1.0 for both models on "cat": neither marker is clipped at the axis edge, nor hidden under the other
    assert all(not c.get_clip_on() for c in markers)
    cat = [tuple(c.get_offsets()[0]) for c in markers]
    assert cat[0][0] == cat[1][0] == 1.0 and cat[0][1] != cat[1][1]


CHROMIUM = __import__("shutil").which("chromium") or __import__("shutil").which("chromium-browser")


def framed(page: str, width: int, script: str = "", height: int = 3000) -> str:
    """`page` in an iframe `width` CSS pixels wide (headless Chromium's window is at least 500 wide;
    the frame is a real 420-pixel viewport for the page's layout and media queries)."""
    import html

    return (f'<!DOCTYPE html><html><body style="margin:0"><iframe id=f style="width:{width}px;height:{height}px;'
            f'border:0" srcdoc="{html.escape(page, quote=True)}" onload="{html.escape(script, quote=True)}">'
            "</iframe></body></html>")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI: apt-get install -y chromium)")
@pytest.mark.parametrize("width", [420, 1400])
def test_report_page_fits_a_phone_and_a_desktop_without_sideways_scrolling(phone_report, width, tmp_path):
    """In a real browser: the page itself never needs sideways scrolling (wide tables and figures
    scroll inside their own wrappers)."""
    _, out = phone_report
    script = ("var d = document.getElementById('f').contentDocument;"
              "document.title = 'W' + d.documentElement.scrollWidth + ' ' + d.querySelectorAll('table').length;")
    probe = tmp_path / "probe.html"
    probe.write_text(framed((out / "report.html").read_text(), width, script))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width + 100},1000", "--dump-dom",
               f"file://{probe}"]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    scroll_width, tables = map(int, title[1:].split())
    assert tables >= 2 and scroll_width <= width, title
