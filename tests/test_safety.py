"""Issue 21: nothing silently wrong, nothing destroyed, nothing hangs. Each test reproduces a case an
adversarial review found (a NaN passed off as a score, a flag that allocates until the kernel kills the
run, a traceback where one line is due) and asserts the fix."""
import json
import os
import shutil

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification

from clip_benchmark_diffusion.integration.adapter import DiffusionZeroShotModel, PromptTokenizer
from clip_benchmark_diffusion.records import read_records
from clip_benchmark_diffusion.safety import NonFiniteError, ResourceLimit
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from fake_backend import FakeBackend
from test_adapter import ListLoader
from test_records import RECORD, eval_args, run_in_process


def one_error_line(code, err):
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("clip_benchmark_diffusion: error: "), lines[-1]
    return lines[-1]


@pytest.fixture
def pipeline_copy(tiny_epsilon_pipeline, tmp_path):
    return shutil.copytree(tiny_epsilon_pipeline, tmp_path / "model")


# ------------------------------------------------------------------------------ non-finite errors
def test_nan_weights_stop_with_one_line_and_no_result(pipeline_copy, tiny_wds, tmp_path, capsys, monkeypatch):
    """Issue 21: one NaN bias tensor gave rc 0, every image class 0, errors null and acc1 0.25 written."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights_file = str(pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors")
    with safe_open(weights_file, "pt") as handle:
        metadata = handle.metadata()
    state = load_file(weights_file)
    bias = next(name for name in sorted(state) if name.endswith("conv_out.bias"))
    state[bias] = torch.full_like(state[bias], float("nan"))
    save_file(state, weights_file, metadata)
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    line = one_error_line(code, err)
    assert "dataset image 0" in line and "candidate 'a photo of a cat.'" in line and "float32" in line
    assert "nan" in line and "no result is written" in line
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.predictions.jsonl").exists()
    assert not list(tmp_path.glob("*.lock"))


class NanAfterBackend(FakeBackend):
    """Overflows (NaN) from its n-th network call on, as a float16 network does on a hard image."""

    def __init__(self, nan_from_call):
        super().__init__(spread=0.5)
        self.nan_from_call, self.network_calls = nan_from_call, 0

    def predict(self, x_t, timesteps, conditioning):
        self.network_calls += 1
        out = super().predict(x_t, timesteps, conditioning)
        return out * float("nan") if self.network_calls >= self.nan_from_call else out


def test_a_nan_mid_run_keeps_the_images_scored_before_and_names_the_image(tmp_path):
    """3 classes x 4 draws = 12 rows per image, 6 rows per pass: image k is passes 2k+1 and 2k+2, so NaN
    from pass 7 on stops at image 3 with images 0-2 in the record."""
    settings = ScorerSettings(templates="average_errors", draws=4, batch_size=6, strategy="fixed")
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    path = str(tmp_path / RECORD)
    tokenizer = PromptTokenizer()
    model = DiffusionZeroShotModel(DiffusionScorer(NanAfterBackend(7), settings), tokenizer, record_path=path,
                                   show_progress=False)
    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, ["a", "b", "c"], ["{c}"], "cpu")
    with pytest.raises(NonFiniteError, match=r"^dataset image 3, image key [0-9a-f]{16}, candidate 'a': the error "
                                             r"is nan in float32"):
        zeroshot_classification.run_classification(model, classifier, ListLoader(images, torch.zeros(8),
                                                                                  ["a", "b", "c"], 8), "cpu")
    kept = read_records(path)["images"]
    assert [image["index"] for image in kept] == [0, 1, 2]
    assert all(None not in image["errors"] for image in kept)


def test_float16_advice_names_bfloat16_or_float32():
    from clip_benchmark_diffusion.safety import check_finite

    with pytest.raises(NonFiniteError, match="try --diffusion_dtype bfloat16 or float32"):
        check_finite(torch.tensor([1.0, float("inf")]), "image key 00", lambda row: "cat", torch.float16)
    check_finite(torch.tensor([1.0, 2.0]), "image key 00", lambda row: "cat", torch.float16)  # finite: silent


# ------------------------------------------------------------------------------ numeric flags
@pytest.mark.parametrize("flags, message", [
    (("--diffusion_objective", "x0_buckets", "--diffusion_bucket_weights", "0", "0", "0", "0"), "all zero"),
    (("--diffusion_objective", "x0_buckets", "--diffusion_bucket_weights", "1", "inf"), "must be finite"),
    (("--diffusion_objective", "x0_buckets", "--diffusion_bucket_weights", "1", "nan"), "must be finite"),
    (("--diffusion_objective", "x0_heuristic", "--diffusion_heuristic_rate", "nan"), "heuristic_rate must be"),
    (("--diffusion_objective", "x0_heuristic", "--diffusion_heuristic_rate", "-100000"), "heuristic_rate must be"),
    (("--diffusion_objective", "x0_heuristic", "--diffusion_heuristic_rate", "inf"), "heuristic_rate must be"),
    (("--diffusion_guidance", "nan"), "guidance must be finite"),
    (("--diffusion_logit_normal", "0", "inf"), "logit_normal_std must be finite"),
    (("--diffusion_resolution", "100000"), "above the limit of 4096 px"),
    (("--diffusion_batch_size", "1000000"), "above the limit of 65536 rows"),
])
def test_bad_numbers_are_refused_before_any_work(flags, message, tiny_epsilon_pipeline, tiny_wds, tmp_path, capsys,
                                                 monkeypatch):
    """Issue 21: each of these gave every image class 0 and a result JSON, or allocated until killed."""
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds, *flags), tmp_path, capsys, monkeypatch)
    assert message in one_error_line(code, err)
    assert "Loading" not in err and os.listdir(tmp_path) == []


def test_flags_the_objective_ignores_are_named_and_flags_on_a_clip_run_too(tiny_epsilon_pipeline, tiny_wds,
                                                                           tmp_path, capsys, monkeypatch):
    from clip_benchmark_diffusion.integration import flags

    monkeypatch.setattr(flags, "_WARNED", set())
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds, "--diffusion_objective", "epsilon",
                                         "--diffusion_bucket_weights", "1", "2", "--diffusion_heuristic_rate", "3",
                                         "--diffusion_guidance", "3.5"),
                               tmp_path, capsys, monkeypatch)
    assert code == 0
    assert "warning: --diffusion_bucket_weights has no effect with --diffusion_objective epsilon" in err
    assert "warning: --diffusion_heuristic_rate has no effect with --diffusion_objective epsilon" in err
    assert "warning: --diffusion_guidance has no effect on a StableDiffusionPipeline" in err
    code, err = run_in_process(["eval", "--model", "ref-world-clip", "--pretrained", "ref-world", "--dataset",
                                "wds/animals", "--dataset_root", tiny_wds, "--num_workers", "0", "--output",
                                "clip.json", "--diffusion_draws", "8"], tmp_path, capsys, monkeypatch)
    assert code == 0 and "--diffusion_draws only apply to diffusion models; model 'ref-world-clip' ignores" in err


# ------------------------------------------------------------------------------ resource limits
def test_the_per_draw_table_is_sized_by_the_cap_not_by_draws():
    """Issue 21: --diffusion_draws 1e9 --diffusion_max_calls 60 tried to allocate 48 GB."""
    settings = ScorerSettings(templates="average_errors", draws=10 ** 9, strategy="fixed", max_calls=60, batch_size=64)
    scores = DiffusionScorer(FakeBackend(spread=0.5), settings).score(torch.rand(2, 3, 8, 8), [["a"], ["b"], ["c"]])
    assert [s.calls for s in scores] == [60, 60] and all(s.capped for s in scores)
    assert scores[0].per_draw.shape == (3, 20)


def test_draws_without_a_cap_are_refused_with_the_estimate_and_the_limit(monkeypatch):
    monkeypatch.setenv("CLIP_BENCHMARK_DIFFUSION_TABLE_LIMIT_GB", "1")
    settings = ScorerSettings(templates="average_errors", draws=10 ** 9, strategy="fixed")
    with pytest.raises(ResourceLimit, match=r"1,000,000,000 draws x 3 candidates x 2 images need 59.6 GiB of "
                                            r"per-draw tables, above the limit of 1.0 GiB"):
        DiffusionScorer(FakeBackend()).__class__(FakeBackend(), settings).score(torch.rand(2, 3, 8, 8),
                                                                                 [["a"], ["b"], ["c"]])


def test_draws_the_tables_cannot_hold_are_refused_before_the_model_loads(tiny_epsilon_pipeline, tiny_wds, tmp_path,
                                                                         capsys, monkeypatch):
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds, "--diffusion_draws", "1000000000"),
                               tmp_path, capsys, monkeypatch)
    assert "1,000,000,000 draws x 3 candidates x 4 images need 119.2 GiB of per-draw tables, above the limit of " \
           "4.0 GiB" in one_error_line(code, err)
    assert "Loading" not in err and os.listdir(tmp_path) == []
    # under a cap, the same draws need a table of what the cap pays for: it runs
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds, "--diffusion_draws", "1000000000",
                                         "--diffusion_max_calls", "12"), tmp_path, capsys, monkeypatch)
    assert code == 0, err[-2000:]
    assert all(image["calls"] == 12 and image["capped"] for image in read_records(str(tmp_path / RECORD))["images"])


def test_row_buffers_follow_the_rows_a_pass_has_not_the_batch_size():
    """Issue 21: --diffusion_batch_size 1000000 allocated 4 GB of row buffers for 24-row passes."""
    settings = ScorerSettings(templates="average_errors", draws=4, strategy="fixed", batch_size=60000)
    scorer = DiffusionScorer(FakeBackend(spread=0.5), settings)
    scorer.score(torch.rand(2, 3, 8, 8), [["a"], ["b"], ["c"]])
    sizes = [buffer.shape[0] for _, buffer in scorer._passes.gather.buffers.values()]
    assert sizes and max(sizes) <= 2 * 3 * 4


# ------------------------------------------------------------------------------ one clear line each
@pytest.mark.parametrize("line, message", [
    ("[1, 2]", "line 2: valid JSON but not an object (list)"),
    ("42", "line 2: valid JSON but not an object (int)"),
    ('{"type": "image", "index": 0, "ranking": [0]}', "line 2: an image line without an image_key"),
])
def test_a_record_line_that_is_not_a_record_line_names_file_and_line(line, message, tmp_path):
    from clip_benchmark_diffusion.records import RecordError

    path = tmp_path / RECORD
    path.write_text('{"type": "header"}\n' + line + '\n{"type": "summary"}\n')
    with pytest.raises(RecordError, match=r"out\.diffusion\.jsonl, " + message.replace("(", r"\(").replace(")", r"\)")):
        read_records(str(path))


def test_such_a_record_stops_a_run_with_one_line_and_is_left_as_it_was(tiny_epsilon_pipeline, tiny_wds, tmp_path,
                                                                      capsys, monkeypatch):
    text = '{"type": "header"}\n["not", "an", "object"]\n'
    (tmp_path / RECORD).write_text(text)
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds), tmp_path, capsys, monkeypatch)
    assert "line 2: valid JSON but not an object" in one_error_line(code, err)
    assert (tmp_path / RECORD).read_text() == text and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"), ("[]", "is a JSON list"), ("{}", "is an empty object"),
    ('{"unet": ["diffusers", "UNet2DConditionModel"]}', "is an object without _class_name"),
])
def test_a_broken_model_index_is_one_line(content, message, pipeline_copy):
    from clip_benchmark_diffusion.checkpoints import CheckpointError, locate

    (pipeline_copy / "model_index.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        locate(str(pipeline_copy))


def test_a_broken_model_index_stops_the_cli_with_one_line(pipeline_copy, tiny_wds, tmp_path, capsys, monkeypatch):
    (pipeline_copy / "model_index.json").write_text("[]")
    code, err = run_in_process(eval_args(pipeline_copy, tiny_wds), tmp_path, capsys, monkeypatch)
    assert "model_index.json is a JSON list" in one_error_line(code, err)


@pytest.mark.parametrize("flags, message", [
    (("--diffusion_max_candidates", "2"), "--diffusion_max_candidates 2 is below the dataset's 3 classes"),
    (("--diffusion_max_calls", "2"), "--diffusion_max_calls 2 cannot pay for one draw of each of the 3"),
    (("--diffusion_prefilter", "no-such-clip,openai"), "open_clip has no model 'no-such-clip'"),
    (("--diffusion_prefilter", "ref-world-clip,no-such-tag"), "has no pretrained weights 'no-such-tag'"),
])
def test_checks_that_ran_after_loading_now_run_before(flags, message, tiny_epsilon_pipeline, tiny_wds, tmp_path,
                                                      capsys, monkeypatch):
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds, *flags), tmp_path, capsys, monkeypatch)
    assert message in one_error_line(code, err)
    assert "Loading" not in err and os.listdir(tmp_path) == []


def test_max_candidates_below_the_classes_is_one_line_when_the_count_is_only_known_late():
    from clip_benchmark_diffusion.settings import UnsupportedSettings

    settings = ScorerSettings(templates="average_errors", strategy="fixed", draws=2, max_candidates=2)
    model = DiffusionZeroShotModel(DiffusionScorer(FakeBackend(), settings), PromptTokenizer(), show_progress=False)
    tokenizer = model.tokenizer
    with pytest.raises(UnsupportedSettings, match="--diffusion_max_candidates 2 is below the number of classes"):
        zeroshot_classification.zero_shot_classifier(model, tokenizer, ["a", "b", "c"], ["{c}"], "cpu")


def test_an_unknown_dataset_is_one_line(tiny_epsilon_pipeline, tmp_path, capsys, monkeypatch):
    args = eval_args(tiny_epsilon_pipeline, str(tmp_path))
    args[args.index("wds/animals")] = "no_such_dataset"
    code, err = run_in_process(args, tmp_path, capsys, monkeypatch)
    # caught before the model loads (the late check after clip_benchmark's own error stays as a fallback)
    assert "--dataset no_such_dataset: clip_benchmark has no such dataset" in one_error_line(code, err)


def test_a_full_disk_is_one_line_and_keeps_the_images_written(tiny_epsilon_pipeline, tiny_wds, tmp_path, capsys,
                                                              monkeypatch):
    import errno

    from clip_benchmark_diffusion.records import RunRecorder

    original = RunRecorder.add

    def add(self, record):
        if len(self._in_file) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        original(self, record)

    monkeypatch.setattr(RunRecorder, "add", add)
    code, err = run_in_process(eval_args(tiny_epsilon_pipeline, tiny_wds), tmp_path, capsys, monkeypatch)
    line = one_error_line(code, err)
    assert "No space left on device writing out.diffusion.jsonl" in line and "kept in the record" in line
    assert len(read_records(str(tmp_path / RECORD))["images"]) == 2 and not (tmp_path / "out.json").exists()
    assert not list(tmp_path.glob("*.lock"))


def test_a_16_bit_png_is_scaled_not_read_as_white_and_said_once(tmp_path, capsys):
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from clip_benchmark_diffusion import safety
    from clip_benchmark_diffusion.backends.base import DiffusionBackend

    values = np.full((8, 8), 16384, dtype=np.uint16)  # a quarter grey in 16 bits
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image = Image.open(tmp_path / "grey16.png")
    assert image.mode.startswith("I") and np.asarray(image.convert("RGB")).min() == 255  # PIL alone: white
    safety._WARNED_16_BIT.clear()
    transform = DiffusionBackend.image_transform(SimpleNamespace(resolution=8))
    pixels = transform(image)
    assert pixels.shape == (3, 8, 8) and pixels.mean().item() == pytest.approx(64 / 255 * 2 - 1, abs=0.01)
    transform(Image.open(tmp_path / "grey16.png"))
    assert capsys.readouterr().err.count("16-bit images (mode") == 1
    assert transform(Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))).max().item() == \
        pytest.approx(200 / 255 * 2 - 1, abs=1e-6)  # 8-bit images as before
