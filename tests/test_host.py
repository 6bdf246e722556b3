"""The host must survive the plugin: a CLIP-only user of clip_benchmark is never broken by it.

Each test runs a copy of the installed clip_benchmark, changed the way an upstream release could
change it, in a fresh interpreter with the plugin's start-up hook active."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_cli import TINY_OPEN_CLIP_CONFIG


@pytest.fixture
def changed_host(tmp_path):
    """Copy clip_benchmark and apply {file: [(old, new), ...]} edits to the copy."""
    import shutil

    import clip_benchmark

    def make(edits):
        root = tmp_path / "host"
        target = root / "clip_benchmark"
        shutil.copytree(os.path.dirname(clip_benchmark.__file__), target,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for relative, replacements in edits.items():
            path = target / relative
            text = path.read_text()
            for old, new in replacements:
                assert old in text, f"{relative} no longer contains {old!r}"
                text = text.replace(old, new)
            path.write_text(text)
        return str(root)

    return make


def run_python(code, host_root, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": host_root}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def clip_eval_argv(model_dir, wds_root, output):
    return ["clip_benchmark", "eval", "--model", f"local-dir:{model_dir}", "--pretrained", "", "--dataset",
            "wds/animals", "--dataset_root", wds_root, "--num_workers", "0", "--batch_size", "6", "--output", output]


@pytest.fixture
def tiny_open_clip(tmp_path):
    model_dir = tmp_path / "tiny-open-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    return str(model_dir)


def test_a_renamed_cli_function_disables_the_plugin_with_one_warning(changed_host, tiny_open_clip, tiny_wds,
                                                                     tmp_path):
    host = changed_host({"cli.py": [("def get_parser_args():", "def build_parser_and_args():"),
                                    ("parser, base = get_parser_args()", "parser, base = build_parser_and_args()")]})
    argv = clip_eval_argv(tiny_open_clip, tiny_wds, "clip.json")
    result = run_python(f"""
        import sys
        import clip_benchmark.cli as cli
        import clip_benchmark.models as models
        assert cli.__file__.startswith({host!r}), cli.__file__
        print("MODEL_TYPES", models.MODEL_TYPES)
        sys.argv = {argv!r}
        cli.main()
        """, host, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("clip_benchmark_diffusion:")]
    assert len(warnings) == 1
    assert "diffusion models are disabled" in warnings[0] and "clip_benchmark.cli.get_parser_args" in warnings[0]
    assert "MODEL_TYPES ['open_clip', 'ja_clip']" in result.stdout  # the models registry patch was undone
    metrics = json.loads((tmp_path / "clip.json").read_text())["metrics"]
    assert set(metrics) == {"acc1", "acc5", "mean_per_class_recall"}


def test_a_new_keyword_in_run_classification_reaches_it_for_clip_and_diffusion(changed_host, tiny_open_clip,
                                                                             tiny_epsilon_pipeline, tiny_wds,
                                                                             tmp_path):
    """Upstream adds `topk_limit` to run_classification and passes it: the wrappers must forward it."""
    module = "metrics/zeroshot_classification.py"
    host = changed_host({module: [
        ("def run_classification(model, classifier, dataloader, device, amp=True):",
         "def run_classification(model, classifier, dataloader, device, amp=True, topk_limit=None):\n"
         "    print('topk_limit', topk_limit)"),
        ("run_classification(model, classifier, dataloader, device, amp=amp)",
         "run_classification(model, classifier, dataloader, device, amp=amp, topk_limit=5)")]})
    clip_argv = clip_eval_argv(tiny_open_clip, tiny_wds, "clip.json")
    diffusion_argv = ["clip_benchmark", "eval", "--model", "sd-diffusion", "--pretrained", tiny_epsilon_pipeline,
                      "--dataset", "wds/animals", "--dataset_root", tiny_wds, "--num_workers", "0", "--batch_size",
                      "4", "--diffusion_draws", "2", "--diffusion_no_progress", "--output", "sd.json"]
    result = run_python(f"""
        import sys
        import clip_benchmark.cli as cli
        for argv in ({clip_argv!r}, {diffusion_argv!r}):
            sys.argv = argv
            cli.main()
        """, host, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("topk_limit 5") == 2
    assert not [line for line in result.stderr.splitlines() if line.startswith("clip_benchmark_diffusion: warning")]
    assert set(json.loads((tmp_path / "clip.json").read_text())["metrics"]) == {"acc1", "acc5",
                                                                                 "mean_per_class_recall"}
    records = [json.loads(line) for line in (tmp_path / "sd.diffusion.jsonl").open()]
    assert records[-1]["type"] == "summary" and records[-1]["labels"] == [0, 1, 2, 0, 1, 2]


def test_a_missing_open_clip_table_only_costs_the_reference_clip_tag(monkeypatch, capsys):
    from open_clip import pretrained as open_clip_pretrained

    from clip_benchmark_diffusion.integration import patches

    monkeypatch.delattr(open_clip_pretrained, "_PRETRAINED")
    patches._register_reference_clip()
    err = capsys.readouterr().err
    assert "reference CLIP could not be registered" in err and "file path" in err


def test_the_start_up_hook_imports_nothing_but_itself(tmp_path):
    """What the .pth hook adds to every Python start: its package's empty `__init__`, nothing else (in
    particular not importlib.abc / importlib.resources / tempfile, which cost ~10 ms). Timed by
    `python -m clip_benchmark_diffusion.benchmarks.startup_cost`."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER": "1"})
    rows = [line.split("|")[-1] for line in result.stderr.splitlines() if line.startswith("import time:")]
    names = [row.strip() for row in rows]
    depth = [len(row) - len(row.lstrip()) for row in rows]
    hook = names.index("clip_benchmark_diffusion._autoregister")
    nested, i = [], hook - 1
    while i >= 0 and depth[i] > depth[hook]:  # importtime lists a module's imports just above it, indented
        nested.append(names[i])
        i -= 1
    assert nested == ["clip_benchmark_diffusion"]
