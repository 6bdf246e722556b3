"""The real `clip_benchmark` console script, in subprocesses, with the plugin installed."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from clip_benchmark_diffusion.records import read_records

BIN = os.path.dirname(sys.executable)
CLIP_BENCHMARK = os.path.join(BIN, "clip_benchmark")


def run_cli(args, cwd, env_extra=None, module=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    command = [sys.executable, "-m", "clip_benchmark_diffusion"] if module else [CLIP_BENCHMARK]
    return subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def eval_args(pipeline, wds_root, *extra):
    return ["eval", "--model", "sd-diffusion", "--pretrained", pipeline, "--dataset", "wds/animals",
            "--dataset_root", wds_root, "--num_workers", "0", "--batch_size", "4",
            "--diffusion_draws", "2", "--diffusion_strategy", "fixed", "--diffusion_templates", "average_errors",
            "--diffusion_no_progress", *extra]


@pytest.mark.parametrize("fixture", ["tiny_epsilon_pipeline", "tiny_v_pipeline"])
def test_console_script_writes_result_json_and_per_image_record(fixture, request, tiny_wds, tmp_path):
    pipeline = request.getfixturevalue(fixture)
    result = run_cli(eval_args(pipeline, tiny_wds, "--output", "{dataset}_{pretrained}_{model}.json"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    slug = pipeline.strip("/").replace("/", "_")  # a folder path has '/', the output name must not
    result_json = tmp_path / f"animals_{slug}_sd-diffusion.json"
    dump = json.loads(result_json.read_text())
    assert dump["model"] == "sd-diffusion" and dump["pretrained"] == pipeline
    assert set(dump["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    lines = [json.loads(line) for line in (tmp_path / f"animals_{slug}_sd-diffusion.diffusion.jsonl").open()]
    header, images, summary = lines[0], lines[1:-1], lines[-1]
    assert header["settings"]["draws"] == 2 and header["candidates"][0] == ["a photo of a cat.", "a cat."]
    assert header["model"]["prediction_type"] == ("v_prediction" if "v" in fixture.split("_")[1] else "epsilon")
    assert len(images) == 6 and all(len(image["errors"]) == 3 and image["calls"] == 12 for image in images)
    assert summary["labels"] == [0, 1, 2, 0, 1, 2]
    correct = sum(image["prediction"] == label for image, label in zip(images, summary["labels"]))
    assert dump["metrics"]["acc1"] == pytest.approx(correct / 6)


def test_model_type_flag_and_python_module_entry_point(tiny_epsilon_pipeline, tiny_wds, tmp_path):
    args = eval_args(tiny_epsilon_pipeline, tiny_wds, "--model_type", "diffusion", "--output", "out.json",
                     "--diffusion_templates", "average_embeddings", "--seed", "3", "--diffusion_strategy", "ttest",
                     "--diffusion_min_draws", "2", "--diffusion_ttest_variance", "pooled", "--diffusion_channels_last")
    result = run_cli(args, tmp_path, module=True, env_extra={"CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    header = json.loads((tmp_path / "out.diffusion.jsonl").open().readline())
    assert header["settings"]["templates"] == "average_embeddings" and header["settings"]["seed"] == 3
    assert header["settings"]["strategy"] == "ttest" and header["settings"]["ttest_variance"] == "pooled"
    assert header["settings"]["channels_last"] and header["model"]["channels_last"]  # reached the backend
    record = read_records(str(tmp_path / "out.diffusion.jsonl"))
    correct = sum(image["prediction"] == label for image, label in zip(record["images"], record["summary"]["labels"]))
    assert json.loads((tmp_path / "out.json").read_text())["metrics"]["acc1"] == pytest.approx(correct / 6)


TINY_OPEN_CLIP_CONFIG = {
    "model_cfg": {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "preprocess_cfg": {},
}


def test_open_clip_models_still_work_in_the_same_environment(tiny_wds, tmp_path):
    """An untouched open_clip model (random weights, --pretrained '') through the same CLI."""
    model_dir = tmp_path / "tiny-open-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    result = run_cli(["eval", "--model", f"local-dir:{model_dir}", "--pretrained", "", "--dataset", "wds/animals",
                      "--dataset_root", tiny_wds, "--num_workers", "0", "--batch_size", "6",
                      "--output", str(tmp_path / "clip.json")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads((tmp_path / "clip.json").read_text())["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert not list(tmp_path.glob("*.diffusion.jsonl"))


def test_registration_can_be_switched_off(tmp_path):
    result = run_cli(["eval", "--model", "sd-diffusion", "--model_type", "diffusion"], tmp_path,
                     env_extra={"CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER": "0"})
    assert result.returncode == 2 and "invalid choice: 'diffusion'" in result.stderr


def test_help_lists_the_diffusion_flags(tmp_path):
    result = run_cli(["eval", "--help"], tmp_path)
    assert result.returncode == 0 and "--diffusion_draws" in result.stdout and "--dataset_root" in result.stdout


def _one_line_error(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines[-1].startswith("clip_benchmark_diffusion: error:")
    assert "Traceback" not in result.stderr
    return lines[-1]


def in_process_error(args, cwd, capsys, monkeypatch):
    """The same CLI path (`python -m clip_benchmark_diffusion`) run inside the test process:
    no interpreter start-up per case."""
    from clip_benchmark_diffusion.__main__ import main

    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as stop:
        main(args)
    stderr = capsys.readouterr().err
    return _one_line_error(subprocess.CompletedProcess(args, stop.value.code, "", stderr))


def test_missing_folder_gives_one_clear_line(tiny_wds, tmp_path, capsys, monkeypatch):
    message = in_process_error(eval_args(str(tmp_path / "nope"), tiny_wds), tmp_path, capsys, monkeypatch)
    assert "no such folder" in message and "model_index.json" in message


def test_unavailable_hub_checkpoint_gives_one_clear_line(tiny_wds, tmp_path):
    message = _one_line_error(run_cli(eval_args("sd2-base", tiny_wds), tmp_path))
    assert "stabilityai/stable-diffusion-2-base" in message and "HF_HUB_OFFLINE" in message
    assert "`hf download stabilityai/stable-diffusion-2-base`" in message and "huggingface-cli" not in message
    assert not list(tmp_path.glob("*.json"))


def test_wrong_pipeline_type_gives_one_clear_line(tiny_epsilon_pipeline, tiny_wds, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "other"
    shutil.copytree(tiny_epsilon_pipeline, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableCascadePriorPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    message = in_process_error(eval_args(str(folder), tiny_wds), tmp_path, capsys, monkeypatch)
    assert "StableCascadePriorPipeline is not supported" in message
    assert all(name in message for name in ("StableDiffusion3Pipeline", "FluxPipeline", "DiTPipeline", "IFPipeline"))


def test_folder_that_is_not_a_pipeline_gives_one_clear_line(tiny_wds, tmp_path, capsys, monkeypatch):
    message = in_process_error(eval_args(str(tmp_path), tiny_wds), tmp_path, capsys, monkeypatch)
    assert "no model_index.json" in message


@pytest.mark.parametrize("extra, expected", [
    (["--task", "zeroshot_retrieval"], "task 'zeroshot_retrieval' is not supported"),
    (["--task", "linear_probe"], "task 'linear_probe' is not supported"),
    (["--load_clfs", "x.pt"], "--load_clfs cannot be used"),
    (["--diffusion_objective", "x0_buckets"], "bucket_weights"),
    (["--diffusion_strategy", "schedule", "--diffusion_schedule", "5-50"], "KEEP@DRAWS"),
])
def test_unsupported_options_stop_before_any_compute(tiny_epsilon_pipeline, tiny_wds, tmp_path, extra, expected,
                                                     capsys, monkeypatch):
    message = in_process_error(eval_args(tiny_epsilon_pipeline, tiny_wds, *extra), tmp_path, capsys, monkeypatch)
    assert expected in message


def test_caption_selection_task_on_the_world_binding_set(tiny_epsilon_pipeline, tmp_path):
    from clip_benchmark_diffusion.world import write_test_set

    root = write_test_set(str(tmp_path / "world"), "binding", 8)
    result = run_cli(["eval", "--model", "sd-diffusion", "--pretrained", tiny_epsilon_pipeline, "--dataset",
                      "wds/binding", "--dataset_root", root, "--task", "image_caption_selection", "--num_workers", "0",
                      "--batch_size", "4", "--diffusion_draws", "2", "--output", "binding.json",
                      "--diffusion_no_progress"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "binding.json").read_text())["metrics"]
    assert set(metrics) == {"image_acc", "text_acc", "acc", "instances", "images_per_instance"}
    assert metrics["instances"] == 8 and metrics["images_per_instance"] == 1  # the report then hides image_acc
    lines = [json.loads(line) for line in (tmp_path / "binding.diffusion.jsonl").open()]
    images = [line for line in lines if line["type"] == "image"]
    assert len(images) == 8 and all(len(image["candidates"]) == 2 for image in images)
    text_correct = sum(image["errors"][0] < image["errors"][1] for image in images)
    assert metrics["text_acc"] == pytest.approx(text_correct / 8)
    assert metrics["acc"] == pytest.approx(text_correct / 8)  # one image per instance: a pair is right iff its text is


def test_a_schedule_implies_its_strategy_and_contradicting_strategies_are_refused():
    from clip_benchmark_diffusion.errors import DiffusionUsageError
    from clip_benchmark_diffusion.integration.flags import diffusion_argument_parser, settings_from_options

    parse = diffusion_argument_parser().parse_args
    implied = settings_from_options(parse(["--diffusion_schedule", "5@50,1@500"]), seed=0)
    assert implied.strategy == "schedule" and implied.schedule_keep == (5, 1) and implied.schedule_draws == (50, 500)
    from clip_benchmark_diffusion.settings import ScorerSettings

    assert settings_from_options(parse([]), seed=0).strategy == ScorerSettings().strategy == "guaranteed"
    with pytest.raises(DiffusionUsageError, match="only used by --diffusion_strategy schedule, not ttest"):
        settings_from_options(parse(["--diffusion_strategy", "ttest", "--diffusion_schedule", "5@50,1@500"]), seed=0)
