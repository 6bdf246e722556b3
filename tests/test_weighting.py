"""The learned timestep weighting: the fitter recovers known bucket weights, the weights file reaches
`--diffusion_objective x0_buckets`, and records of different objectives re-weight to the same x0 errors."""
import json
import os

import numpy as np
import pytest
from scipy.special import softmax

from clip_benchmark_diffusion.errors import DiffusionUsageError
from clip_benchmark_diffusion.integration.flags import diffusion_argument_parser, settings_from_options
from clip_benchmark_diffusion.weighting import (DrawErrors, accuracy, bucket_features, fit_bucket_weights,
                                                load_draw_errors, read_bucket_weights, timestep_weights)
from clip_benchmark_diffusion.weighting import main as weighting_main


def _synthetic(true_weights, images=3000, candidates=5, draws=40, strength=12.0, seed=0):
    """Per-draw errors at random timesteps whose labels follow softmax(-strength * sum_b w_b F_kb)."""
    rng = np.random.default_rng(seed)
    timesteps = rng.integers(0, 1000, (images, draws))
    errors = rng.exponential(1.0, (images, candidates, draws))
    data = DrawErrors(errors, timesteps, np.zeros(images, dtype=np.int64), np.linspace(0.999, 0.01, 1000))
    probabilities = softmax(-strength * bucket_features(data) @ true_weights, axis=1)
    data.labels = np.array([rng.choice(candidates, p=p) for p in probabilities])
    return data


def test_fitter_recovers_known_bucket_weights_from_synthetic_per_draw_errors():
    true = np.zeros(20)
    true[3:9] = [1, 2, 4, 4, 2, 1]
    true[15] = 2
    data = _synthetic(true)
    fitted = fit_bucket_weights(data)
    expected = true / true.mean()  # the fit reports weights of mean 1
    assert fitted.min() >= 0 and fitted.mean() == pytest.approx(1.0)
    assert np.abs(fitted - expected).max() < 0.5, np.round(fitted, 2)
    assert np.abs(fitted[true == 0]).max() < 0.25
    assert np.corrcoef(fitted, expected)[0, 1] > 0.98
    learned = accuracy(data, "learned", bucket_weights=fitted).mean()
    assert learned > accuracy(data, "uniform").mean() + 0.2
    assert learned == pytest.approx(accuracy(data, "learned", bucket_weights=true).mean(), abs=0.02)


def test_bucket_features_are_the_x0_buckets_objective():
    data = _synthetic(np.ones(20), images=50)
    weights = np.random.default_rng(1).random(20)
    per_draw = timestep_weights("learned", data.timesteps, data.alphas_cumprod, bucket_weights=weights)
    direct = (data.errors * per_draw[:, None, :]).mean(axis=2)
    assert np.allclose(bucket_features(data) @ weights, direct)


def test_weights_file_formats_and_the_flag_that_reads_them(tmp_path):
    (tmp_path / "fit.json").write_text(json.dumps({"bucket_weights": [0.5, 1.5, 0], "images": 10}))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "plain.txt").write_text("1 2\n3\n")
    (tmp_path / "negative.txt").write_text("1 -2")
    assert read_bucket_weights(str(tmp_path / "fit.json")) == (0.5, 1.5, 0.0)
    assert read_bucket_weights(str(tmp_path / "list.json")) == (1.0, 2.0)
    assert read_bucket_weights(str(tmp_path / "plain.txt")) == (1.0, 2.0, 3.0)
    options = diffusion_argument_parser().parse_args(
        ["--diffusion_objective", "x0_buckets", "--diffusion_bucket_weights_file", str(tmp_path / "fit.json")])
    assert settings_from_options(options, seed=0).bucket_weights == (0.5, 1.5, 0.0)
    for bad in ("negative.txt", "missing.txt"):
        options.diffusion_bucket_weights_file = str(tmp_path / bad)
        with pytest.raises(DiffusionUsageError, match="bucket_weights_file"):
            settings_from_options(options, seed=0)


def test_records_of_two_objectives_give_the_same_x0_errors_and_the_learned_run_matches_offline(
        tmp_path, tiny_epsilon_pipeline, tiny_wds, capsys):
    from clip_benchmark_diffusion.demo import clip_benchmark_eval

    weights = np.linspace(2.0, 0.1, 20)
    (tmp_path / "w.json").write_text(json.dumps({"bucket_weights": weights.tolist()}))
    runs = {"epsilon": [], "buckets": ["--diffusion_objective", "x0_buckets",
                                       "--diffusion_bucket_weights_file", str(tmp_path / "w.json")]}
    data = {}
    for name, flags in runs.items():
        output = str(tmp_path / f"{name}.json")
        clip_benchmark_eval(["--model", "sd-diffusion", "--pretrained", tiny_epsilon_pipeline, "--dataset",
                             "wds/animals", "--dataset_root", tiny_wds, "--num_workers", "0", "--output", output,
                             "--diffusion_draws", "8", "--diffusion_strategy", "fixed", "--diffusion_templates",
                             "average_errors", "--diffusion_no_progress", "--quiet", *flags])
        data[name] = load_draw_errors(output.replace(".json", ".diffusion.jsonl"))
    assert data["epsilon"].errors.shape == (6, 3, 8)
    assert np.array_equal(data["epsilon"].timesteps, data["buckets"].timesteps)
    assert np.allclose(data["epsilon"].errors, data["buckets"].errors, rtol=1e-4)
    result = json.load(open(tmp_path / "buckets.json"))["metrics"]["acc1"]
    assert accuracy(data["buckets"], "learned", bucket_weights=weights).mean() == pytest.approx(result)
    # the command line: fit on one record, compare weightings on another, at two draw prefixes
    records = [str(tmp_path / f"{name}.diffusion.jsonl") for name in runs]
    assert weighting_main(["fit", "--records", records[0], "--out", str(tmp_path / "fit.json")]) == 0
    assert len(read_bucket_weights(str(tmp_path / "fit.json"))) == 20
    capsys.readouterr()
    assert weighting_main(["compare", "--records", records[1], "--weights", str(tmp_path / "fit.json"),
                           "--draws", "4", "8"]) == 0
    table = capsys.readouterr().out
    assert "| uniform | heuristic | snr | learned |" in table and "| buckets | 4 | 6 |" in table
    assert weighting_main(["fit", "--records", str(tmp_path / "w.json"), "--out", os.devnull]) == 2
