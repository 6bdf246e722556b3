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


# ------------------------------------------------------------------------------ issue 21
def test_a_sharded_job_resumed_as_one_process_reuses_every_ranks_record(tiny_epsilon_pipeline, tiny_wds, tmp_path,
                                                                       capsys, monkeypatch):
    """Issue 21: a job killed under torchrun and resumed as one process ignored the other ranks' records."""
    from test_records import eval_args

    code, _ = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0
    lines = (tmp_path / "out.diffusion.jsonl").read_text().splitlines()
    header, images = lines[0], [line for line in lines if '"type": "image"' in line]
    assert len(images) == 6
    # as a killed 2-rank job leaves them: rank 0 wrote images 0-2, rank 1 images 3-5, no summaries
    (tmp_path / "out.diffusion.jsonl").write_text("\n".join([header] + images[:3]) + "\n")
    (tmp_path / "out.diffusion.rank1.jsonl").write_text("\n".join([header] + images[3:]) + "\n")
    (tmp_path / "out.json").unlink()
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds), tmp_path, capsys, monkeypatch)
    assert code == 0 and "reused 6 of 6 images" in err and "; 0 scored" in err
    record = read_records(str(tmp_path / "out.diffusion.jsonl"))
    assert sorted(json.dumps(i, sort_keys=True) for i in record["images"]) == \
        sorted(json.dumps(json.loads(i), sort_keys=True) for i in images)
    assert record["summary"]["unet_calls_this_session"] == 0 and record["summary"]["merged_from_rank_records"] == 3
    assert not (tmp_path / "out.diffusion.rank1.jsonl").exists()


def test_ranks_launched_with_another_output_or_draws_are_refused_naming_the_rank(tiny_epsilon_pipeline):
    """Issue 21: a rank with another --output hung rank 0 for up to 72 hours (its keys went under another
    record's prefix, so rank 0 waited for a rank that was never coming); other draws or seed were not
    refused and that rank's work was thrown away. The ranks now compare in the job's own store, before
    the model loads (the torchrun test above runs the same comparison between agreeing ranks)."""
    import argparse

    from torch.distributed import HashStore

    from clip_benchmark_diffusion.integration.flags import diffusion_argument_parser, settings_for_dataset
    from clip_benchmark_diffusion.integration.run import run_identity
    from clip_benchmark_diffusion.integration.ranks import Shard, ShardError

    def identity(output, *flags):
        args = argparse.Namespace(dataset="wds/animals", pretrained=tiny_epsilon_pipeline, task="auto", seed=0,
                                  output=output)
        options = diffusion_argument_parser().parse_args(["--diffusion_draws", "2", *flags])
        settings = settings_for_dataset(options, args.seed, args.dataset)[0]
        return run_identity(args, output, os.path.splitext(output)[0] + ".diffusion.jsonl", settings)

    values = [identity("out.json"), identity("other.json", "--diffusion_draws", "3")]
    store = HashStore()
    job = Shard(0, 2, 0, store)  # one process's view; each rank gets its own Shard over the same store
    ranks = [Shard(r, 2, r, store).for_run(values[r]["--diffusion_records"]) for r in (0, 1)]
    assert job.runs == 0 and all(rank.job_store is not None for rank in ranks)
    errors = _in_threads(*[lambda r=r: ranks[r].agree("settings or output", values[r], job=True) for r in (0, 1)])
    for error in errors:
        assert isinstance(error, ShardError), errors
        assert "rank 1 was launched with other settings or output than rank 0" in str(error)
        assert "--diffusion_draws: rank 0 2, rank 1 3" in str(error) and "--output: rank 0 " in str(error)


def _two_ranks(store=None):
    from torch.distributed import HashStore

    from clip_benchmark_diffusion.integration.ranks import Shard

    store = store or HashStore()
    return [Shard(r, 2, r, store).for_run("run") for r in (0, 1)]


def _in_threads(*calls):
    """Run each call in its own thread (as each rank would run in its own process): their exceptions."""
    import threading

    errors = [None] * len(calls)

    def run(k):
        try:
            calls[k]()
        except Exception as error:  # noqa: BLE001 - collected for the test
            errors[k] = error

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_ranks_with_other_weights_are_refused_before_the_first_image(tmp_path):
    """Same flags, same path, other weights behind it (another node's copy): rank 1's images would be
    thrown away by rank 0. Each rank's adapter compares before scoring anything."""
    import torch

    from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
    from clip_benchmark_diffusion.scorer import DiffusionScorer
    from clip_benchmark_diffusion.settings import ScorerSettings
    from clip_benchmark_diffusion.integration.ranks import ShardError
    from fake_backend import FakeBackend

    settings = ScorerSettings(templates="average_errors", strategy="fixed", draws=2)
    models = []
    for shard, weights in zip(_two_ranks(), ("aaaa", "bbbb")):
        header = {"settings": settings.to_dict(), "model": {"backend": "fake", "weights": {"all": weights}}}
        model = DiffusionZeroShotModel(DiffusionScorer(FakeBackend(), settings), PromptTokenizer(),
                                       record_path=str(tmp_path / "out.diffusion.jsonl"), record_header=header,
                                       show_progress=False, shard=shard)
        for name in ("cat", "dog"):
            model.encode_text(model.tokenizer([name]))
        models.append(model)
    errors = _in_threads(*[lambda m=m: m.rank(torch.rand(2, 3, 8, 8)) for m in models])
    for error in errors:
        assert isinstance(error, ShardError) and "rank 1 was launched with other weights or candidates" in str(error)
        assert "weights: rank 0 aaaa, rank 1 bbbb" in str(error)
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_rank_that_never_comes_is_a_timeout_with_a_message(monkeypatch):
    from clip_benchmark_diffusion.integration.ranks import ShardError

    monkeypatch.setenv("CLIP_BENCHMARK_DIFFUSION_RANK_TIMEOUT_S", "0.5")
    rank0, _ = _two_ranks()
    with pytest.raises(ShardError, match=r"rank 0: rank\(s\) \[1\] did not reach the settings check within 0.5 s"):
        rank0.agree("settings", {"draws": 2})
    monkeypatch.setenv("CLIP_BENCHMARK_DIFFUSION_RANK_WAIT_S", "0.5")
    with pytest.raises(ShardError, match=r"rank 0 waited 0.5 s for rank\(s\) \[1\] to finish"):
        rank0.wait_for_other_ranks()


def test_ranks_that_never_join_the_rendezvous_are_a_timeout_with_a_message(monkeypatch):
    from clip_benchmark_diffusion.integration import ranks

    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(free_port())), ("CLIP_BENCHMARK_DIFFUSION_RANK_TIMEOUT_S", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ranks, "_process_shard", {})
    with pytest.raises(RuntimeError, match=r"rank 0 of 2: the other ranks did not join at 127.0.0.1:\d+ within 2 s"):
        ranks.shard_from_env()
