"""Records that cannot be trusted wrongly: every way found to reuse stale scores or lose finished
work, reproduced through the CLI (in this process: `python -m clip_benchmark_diffusion eval`) or
the record API."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification

from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
from clip_benchmark_diffusion.records import (RecordError, RunRecorder, archive_path, read_records, record_lock,
                                              settings_fingerprint)
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from clip_benchmark_diffusion.weights import weights_fingerprint
from fake_backend import FakeBackend
from test_adapter import ListLoader

RECORD = "out.diffusion.jsonl"


def eval_args(pipeline, wds_root, *extra):
    return ["eval", "--model", "sd-diffusion", "--pretrained", str(pipeline), "--dataset", "wds/animals",
            "--dataset_root", wds_root, "--num_workers", "0", "--batch_size", "4", "--diffusion_draws", "2",
            "--diffusion_strategy", "fixed", "--diffusion_templates", "average_errors", "--diffusion_no_progress",
            "--output", "out.json", *extra]


def run_in_process(args, cwd, capsys, monkeypatch):
    """`python -m clip_benchmark_diffusion <args>` in this process: (exit code, stderr)."""
    from clip_benchmark_diffusion.__main__ import main

    monkeypatch.chdir(cwd)
    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err if capsys is not None else ""


def summary(cwd):
    return read_records(str(cwd / RECORD))["summary"]


@pytest.fixture
def pipeline_copy(tiny_epsilon_pipeline, tmp_path):
    return shutil.copytree(tiny_epsilon_pipeline, tmp_path / "model")


def test_changed_weights_are_never_reused(pipeline_copy, tiny_wds, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    code, _ = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0 and summary(tmp_path)["unet_calls_this_session"] == 6 * 3 * 2 * 2
    first = read_records(str(tmp_path / RECORD))
    weights_file = pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights_file))
    save_file({name: tensor * 0.5 for name, tensor in state.items()}, str(weights_file))  # same shapes, in place
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0
    assert summary(tmp_path)["images_reused"] == 0 and summary(tmp_path)["unet_calls_this_session"] == 72
    second = read_records(str(tmp_path / RECORD))
    assert second["header"]["model"]["weights"]["unet"] != first["header"]["model"]["weights"]["unet"]
    assert second["header"]["model"]["weights"]["vae"] == first["header"]["model"]["weights"]["vae"]
    assert second["images"][0]["errors"] != first["images"][0]["errors"]
    assert "reused 0 of 6 images" in err
    kept = archive_path(str(tmp_path / RECORD), settings_fingerprint(first["header"]))
    assert read_records(kept)["images"] == first["images"]  # the old model's record is kept, not overwritten


def test_weight_hashes_are_cached_by_path_size_and_mtime(pipeline_copy):
    from clip_benchmark_diffusion.weights import hash_cache_file

    parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    first = weights_fingerprint(str(pipeline_copy), parts)
    cache = hash_cache_file()
    stamp = os.stat(cache).st_mtime_ns
    assert weights_fingerprint(str(pipeline_copy), parts) == first
    assert os.stat(cache).st_mtime_ns == stamp  # nothing was re-hashed, so the cache was not rewritten
    config = pipeline_copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    changed = weights_fingerprint(str(pipeline_copy), parts)
    assert changed["scheduler"] != first["scheduler"] and changed["unet"] == first["unet"]
    assert changed["all"] != first["all"]


def test_a_failed_run_or_other_settings_never_destroy_a_record(pipeline_copy, tiny_wds, tmp_path, capsys,
                                                               monkeypatch):
    code, _ = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0
    good = (tmp_path / RECORD).read_bytes()

    # settings the model cannot serve stop before any file is touched, with one line
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds, "--diffusion_t_range", "0", "5000"), tmp_path,
                               capsys, monkeypatch)
    assert code == 2 and err.strip().splitlines()[-1].startswith("clip_benchmark_diffusion: error: timestep range")
    assert "Traceback" not in err and (tmp_path / RECORD).read_bytes() == good
    config = pipeline_copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"epsilon"', '"sample"'))
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 2 and "prediction_type 'sample'" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and (tmp_path / RECORD).read_bytes() == good
    config.write_text(config.read_text().replace('"sample"', '"epsilon"'))

    # draws 2 -> 1 -> 2: the first record is kept aside, then comes back whole
    code, _ = run_in_process(eval_args(pipeline_copy, tiny_wds, "--diffusion_draws", "1"), tmp_path, capsys,
                             monkeypatch)
    assert code == 0 and summary(tmp_path)["unet_calls_this_session"] == 36
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0 and summary(tmp_path)["unet_calls_this_session"] == 0
    assert "reused 6 of 6 images from out.diffusion.jsonl; 0 scored" in err
    assert (tmp_path / RECORD).read_bytes().startswith(good)  # the same file, with a second summary appended
    kept = [name for name in os.listdir(tmp_path) if name.startswith("out.diffusion.") and name != RECORD
            and name.endswith(".jsonl")]
    assert len(kept) == 1 and read_records(str(tmp_path / kept[0]))["header"]["settings"]["draws"] == 1


def test_a_damaged_safetensors_file_stops_with_one_line(pipeline_copy, tiny_wds, tmp_path, capsys, monkeypatch):
    weights_file = pipeline_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[:-100])
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "is damaged" in line and "vae" in line and "Traceback" not in err
    assert not (tmp_path / RECORD).exists()


def test_a_second_run_on_a_record_in_use_stops_with_one_line(tiny_epsilon_pipeline, tiny_wds, tmp_path):
    """The lock is an OS lock: a run in another process sees it."""
    with record_lock(str(tmp_path / RECORD)):
        result = subprocess.run([sys.executable, "-m", "clip_benchmark_diffusion", *eval_args(tiny_epsilon_pipeline,
                                 tiny_wds)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "is being written by another run (pid" in last
    assert not (tmp_path / RECORD).exists() and not (tmp_path / "out.json").exists()


def test_locks_are_reentrant_in_one_process_and_released(tmp_path):
    path = str(tmp_path / RECORD)
    with record_lock(path):
        with record_lock(path):  # the CLI holds it, then the recorder takes it again
            pass
        recorder = RunRecorder(path, {"settings": {}})
        recorder.close()
    with record_lock(path):  # released: free again
        pass


def test_a_torn_last_line_is_dropped_with_a_warning_and_the_run_goes_on(tiny_epsilon_pipeline, tiny_wds, tmp_path,
                                                                        capsys, monkeypatch):
    code, _ = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds), tmp_path, capsys, monkeypatch)
    lines = (tmp_path / RECORD).read_text().splitlines()
    header_and_four = "\n".join(lines[:5]) + "\n"
    (tmp_path / RECORD).write_text(header_and_four + lines[5][: len(lines[5]) // 2])  # killed mid-write
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0 and "line 6: dropped a torn last line" in err
    record = read_records(str(tmp_path / RECORD))
    assert len(record["images"]) == 6 and record["summary"]["images_reused"] == 4
    assert record["summary"]["unet_calls_this_session"] == 2 * 3 * 2 * 2


def test_a_broken_line_inside_a_record_names_file_and_line(tmp_path):
    path = tmp_path / RECORD
    path.write_text('{"type": "header"}\n{"type": "ima\n{"type": "summary"}\n')
    with pytest.raises(RecordError, match=r"out.diffusion.jsonl, line 2: not valid JSON"):
        read_records(str(path))


class CrashingBackend(FakeBackend):
    """Dies (like a SIGKILL) at its n-th network call."""

    def __init__(self, crash_at_call):
        super().__init__(spread=0.5)
        self.crash_at_call, self.network_calls = crash_at_call, 0

    def predict(self, x_t, timesteps, conditioning):
        self.network_calls += 1
        if self.network_calls == self.crash_at_call:
            raise KeyboardInterrupt("killed")
        return super().predict(x_t, timesteps, conditioning)


@pytest.mark.parametrize("strategy, crash_at_call", [("fixed", 9), ("ttest", 13)])
def test_images_are_written_as_soon_as_decided_so_a_kill_loses_only_those_in_flight(strategy, crash_at_call,
                                                                                    tmp_path):
    """One clip_benchmark batch of 8 images, 3 classes x 4 draws = 12 rows per image, 6 rows per pass.
    fixed: image k is passes 2k+1, 2k+2, so a kill in pass 9 keeps images 0-3. ttest (2 draws, then 2
    more; nothing is dropped at p=1e-9): round one is passes 1-8, image k's second round is pass 9+k,
    so a kill in pass 13 keeps images 0-3 as well."""
    settings = ScorerSettings(templates="average_errors", draws=4, batch_size=6, strategy=strategy, min_draws=2,
                              round_draws=2, ttest_p=1e-9)
    classes = ["a", "b", "c"]
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    path = str(tmp_path / RECORD)
    backend = CrashingBackend(crash_at_call=crash_at_call)
    tokenizer = PromptTokenizer()
    model = DiffusionZeroShotModel(DiffusionScorer(backend, settings), tokenizer, record_path=path,
                                   show_progress=False)
    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, classes, ["{c}"], "cpu")
    with pytest.raises(KeyboardInterrupt):
        zeroshot_classification.run_classification(model, classifier, ListLoader(images, torch.zeros(8), classes, 8),
                                                   "cpu")
    kept = read_records(path)["images"]
    assert [image["index"] for image in kept] == [0, 1, 2, 3]
    assert all(image["calls"] == 12 for image in kept)


def test_scorer_reports_each_image_when_its_decision_is_made():
    """Adaptive strategies finish images at different rounds: an easy image is reported first."""
    backend = FakeBackend(spread=0.5)
    settings = ScorerSettings(templates="average_errors", draws=64, strategy="ttest", min_draws=2, round_draws=2,
                              ttest_p=0.05,
                              ttest_variance="pooled", batch_size=64)
    seen = []
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    results = DiffusionScorer(backend, settings).score(images, [["a"], ["b"], ["c"]],
                                                      on_image=lambda i, scores: seen.append((i, scores)))
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert all(results[i] is scores for i, scores in seen)
    calls = [scores.calls for _, scores in seen]
    assert len(set(calls)) == 3 and calls == sorted(calls)  # decided at different rounds, reported in that order


def _rewrite_in_place_keeping_stat(path, data):
    """What `cp -p` onto an existing file, `rsync --inplace` or `touch -r` leave: new bytes of the same size
    in the same inode, with the old mtime (only the change time moves, and no user call can set it back)."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino, before.st_mtime_ns)


def test_a_same_size_in_place_rewrite_with_the_old_mtime_is_not_taken_from_the_hash_cache(pipeline_copy, tiny_wds,
                                                                                           tmp_path, capsys,
                                                                                           monkeypatch):
    """The stale-score case of issue 21: size, inode and mtime all kept, so a cache keyed on them alone
    reused 6 of 6 images scored with the old weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    code, _ = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0
    first = read_records(str(tmp_path / RECORD))
    weights_file = pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors"
    halved = tmp_path / "halved.safetensors"
    with safe_open(str(weights_file), "pt") as handle:
        metadata = handle.metadata()
    save_file({name: tensor * 0.5 for name, tensor in load_file(str(weights_file)).items()}, str(halved), metadata)
    assert halved.stat().st_size == weights_file.stat().st_size
    _rewrite_in_place_keeping_stat(weights_file, halved.read_bytes())
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0 and "reused 0 of 6 images" in err
    second = read_records(str(tmp_path / RECORD))
    assert second["header"]["model"]["weights"]["unet"] != first["header"]["model"]["weights"]["unet"]
    assert second["images"][0]["errors"] != first["images"][0]["errors"]


def test_the_hash_cache_is_reused_while_nothing_changes_and_ignores_entries_without_a_change_time(pipeline_copy):
    import json

    from clip_benchmark_diffusion.weights import hash_cache_file

    parts = ("unet",)
    first = weights_fingerprint(str(pipeline_copy), parts)
    cache_path = hash_cache_file()
    cache = json.load(open(cache_path))
    weights_file = os.path.realpath(pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors")
    assert len(cache[weights_file]) == 5  # size, mtime, inode, ctime, digest
    # an entry of the old format (no ctime) with a wrong digest must not be believed
    cache[weights_file] = cache[weights_file][:3] + ["0" * 32]
    json.dump(cache, open(cache_path, "w"))
    assert weights_fingerprint(str(pipeline_copy), parts) == first


def _one_error_line(code, err):
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert lines[-1].startswith("clip_benchmark_diffusion: error: ")
    return lines[-1]


def test_nothing_the_run_writes_can_replace_a_record(pipeline_copy, tiny_wds, tmp_path, capsys, monkeypatch):
    """Issue 21: records path = result JSON, = predictions file, or --output = an earlier run's record all
    ended with rc 0 and the record replaced at the end. Each is refused before any work now."""
    code, _ = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0
    record = (tmp_path / RECORD).read_bytes()
    result = (tmp_path / "out.json").read_bytes()
    cases = [
        (("--diffusion_records", "out.json"), "is also the result JSON"),
        (("--diffusion_records", "out.predictions.jsonl"), "is also the predictions file"),
        (("--diffusion_records", RECORD, "--output", RECORD), "is also the result JSON"),
        (("--output", RECORD, "--diffusion_records", "new.diffusion.jsonl"), "is an existing diffusion record"),
        (("--output", "new.json", "--diffusion_records", "out.json"), "not a diffusion record"),
    ]
    for extra, message in cases:
        args = eval_args(pipeline_copy, tiny_wds)[:-2] + list(extra)
        code, err = run_in_process(args + (["--output", "out.json"] if "--output" not in extra else []), tmp_path,
                                   capsys, monkeypatch)
        assert message in _one_error_line(code, err), (extra, err)
        assert (tmp_path / RECORD).read_bytes() == record and (tmp_path / "out.json").read_bytes() == result
        assert not (tmp_path / "new.json").exists() and not (tmp_path / "new.diffusion.jsonl").exists()
    assert not list(tmp_path.glob("*.lock"))


def test_a_folder_as_records_path_is_refused_before_any_work(pipeline_copy, tiny_wds, tmp_path, capsys,
                                                             monkeypatch):
    (tmp_path / "records").mkdir()
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds, "--diffusion_records", "records"), tmp_path, capsys,
                               monkeypatch)
    assert "is a folder" in _one_error_line(code, err)
    assert "Loading" not in err  # before the model
    assert sorted(os.listdir(tmp_path)) == ["model", "records"] and not os.listdir(tmp_path / "records")


def test_a_read_only_output_folder_is_one_line_before_any_work(pipeline_copy, tiny_wds, tmp_path, capsys,
                                                               monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes to a chmod 555 folder: what a read-only mount answers instead
        from clip_benchmark_diffusion import safety

        real_access = os.access
        monkeypatch.setattr(safety.os, "access", lambda path, mode: False if os.path.realpath(path) == str(
            folder.resolve()) else real_access(path, mode))
    try:
        code, err = run_in_process(eval_args(pipeline_copy, tiny_wds)[:-2] + ["--output", "results/out.json"],
                                   tmp_path, capsys, monkeypatch)
    finally:
        folder.chmod(0o755)
    assert "is read-only" in _one_error_line(code, err)


def test_the_lock_is_taken_on_the_real_path_so_a_symlink_cannot_bypass_it_and_no_lock_file_outlives_it(tmp_path):
    """Issue 21: a run reaching the record through a symlink locked `<link>.lock` and ran beside the first.
    The other process here is a bare flock on the real path's lock file (what a run by the real path
    takes), so it starts in milliseconds without importing torch."""
    real = tmp_path / "real" / RECORD
    real.parent.mkdir()
    link = tmp_path / "link.diffusion.jsonl"
    link.symlink_to(real)
    other = [sys.executable, "-c", "import fcntl, sys\nhandle = open(sys.argv[1] + '.lock', 'a+')\n"
             "try:\n    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB); print('got it')\n"
             "except OSError: print('refused')", str(real)]
    with record_lock(str(link)):
        assert os.path.exists(str(real) + ".lock") and not os.path.exists(str(link) + ".lock")
        assert subprocess.run(other, capture_output=True, text=True, timeout=60).stdout.strip() == "refused"
        with record_lock(str(real)):  # this process by the other path: the same lock, held once more
            pass
        assert subprocess.run(other, capture_output=True, text=True, timeout=60).stdout.strip() == "refused"
    assert not list(tmp_path.rglob("*.lock"))  # released and removed
    with record_lock(str(real)):
        pass
    assert not list(tmp_path.rglob("*.lock"))
