"""One dataset over several processes (torchrun, CPU, c10d store): the same answers as one process,
every image scored exactly once, and a killed job resumed on another world size loses nothing."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from clip_benchmark_diffusion.records import read_records
from test_records import run_in_process

IMAGES = 12
EVAL = ["eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--dataset", "wds/shape", "--num_workers", "0",
        "--batch_size", "4", "--diffusion_batch_size", "4", "--diffusion_strategy", "fixed", "--diffusion_no_progress",
        "--output", "out.json"]


@pytest.fixture(scope="module")
def shape_set(tmp_path_factory):
    from clip_benchmark_diffusion.world import write_test_set

    return write_test_set(str(tmp_path_factory.mktemp("world")), "shape", IMAGES)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(ranks, args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "clip_benchmark_diffusion", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def by_key(record):
    return {image["image_key"]: image for image in record["images"]}


def assert_same_answers(merged, single):
    assert sorted(merged) == sorted(single)  # every image exactly once (keys are unique in a dict)
    for key, image in single.items():
        assert merged[key]["ranking"] == image["ranking"] and merged[key]["calls"] == image["calls"]
        assert merged[key]["errors"] == pytest.approx(image["errors"], rel=1e-5)


@pytest.fixture(scope="module")
def single_process(shape_set, tmp_path_factory):
    """The reference: the same run in one process."""
    cwd = tmp_path_factory.mktemp("single")
    monkeypatch = pytest.MonkeyPatch()
    code, _ = run_in_process([*EVAL, "--dataset_root", shape_set, "--diffusion_draws", "16"], cwd, None, monkeypatch)
    monkeypatch.undo()
    assert code == 0
    return read_records(str(cwd / "out.diffusion.jsonl")), json.loads((cwd / "out.json").read_text())


def test_ranks_give_single_process_answers_and_a_killed_job_resumes_on_another_world_size(shape_set, single_process,
                                                                                          tmp_path):
    """3 ranks, one killed mid-run (torchrun then stops the others); the same command on 2 ranks finishes:
    every image once, the images recorded before the kill kept as they were and not scored again, and
    predictions, errors, calls and clip_benchmark's metrics as in one process. (Two launches, not four:
    each costs every rank a full torch + clip_benchmark start-up.)"""
    record, result = single_process
    args = [*EVAL, "--dataset_root", shape_set, "--diffusion_draws", "16"]
    job = torchrun(3, args, tmp_path)
    files = [tmp_path / "out.diffusion.jsonl"] + [tmp_path / f"out.diffusion.rank{r}.jsonl" for r in (1, 2)]
    deadline = time.time() + 600
    while time.time() < deadline and job.poll() is None:
        if sum(f.read_text().count('"type": "image"') for f in files if f.exists()) >= 2:
            break
        time.sleep(0.05)
    workers = [int(pid) for pid in open(f"/proc/{job.pid}/task/{job.pid}/children").read().split()]
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun then stops the others
    job.communicate(timeout=300)
    assert job.returncode != 0
    before = {}
    for f in files:
        if f.exists():
            before.update(by_key(read_records(str(f))))
    assert 2 <= len(before) < IMAGES and not (tmp_path / "out.json").exists()

    job = torchrun(2, args, tmp_path)
    _, err = job.communicate(timeout=900)
    assert job.returncode == 0, err[-3000:]
    merged = read_records(str(tmp_path / "out.diffusion.jsonl"))
    assert_same_answers(by_key(merged), by_key(record))
    assert all(image == by_key(merged)[key] for key, image in before.items())  # kept as they were scored
    summary = merged["summary"]
    assert summary["images_reused"] == len(before) and summary["world_size"] == 2
    assert summary["labels"] == record["summary"]["labels"]
    expected_calls = sum(image["calls"] for key, image in by_key(record).items() if key not in before)
    assert summary["unet_calls_all_ranks"] == expected_calls  # the rest scored exactly once, nothing twice
    assert json.loads((tmp_path / "out.json").read_text())["metrics"] == result["metrics"]
    assert not list(tmp_path.glob("*.rank*.jsonl"))  # merged into the record, then removed
    assert "on rank 0" in err and "on the other 1 ranks" in err
