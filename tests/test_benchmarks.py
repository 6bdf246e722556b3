"""The benchmark scripts run end to end at toy size and report what they claim."""
import json

import numpy as np
import pytest

from clip_benchmark_diffusion.benchmarks import calls_vs_accuracy, gpu_throughput
from clip_benchmark_diffusion.benchmarks.calibration import expected_calibration_error, fit_binning
from clip_benchmark_diffusion.strategies import look_schedule


def test_expected_calibration_error_on_hand_made_cases():
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.9] * 10, [True] * 5 + [False] * 5) == pytest.approx(0.4)
    # two bins: 0.25 with accuracy 0.5 (gap .25), 0.95 with accuracy 1 (gap .05), equal weights
    assert expected_calibration_error([0.25, 0.25, 0.95, 0.95], [True, False, True, True]) == pytest.approx(0.15)
    calibrate = fit_binning([0.1, 0.1, 0.9, 0.9], [False, True, True, True])
    assert calibrate([0.12, 0.95]).tolist() == [0.5, 1.0]


def test_li_schedule_scales_the_papers_keep_lists():
    assert calls_vs_accuracy.li_schedule(10, 500) == ((5, 1), (50, 500))
    assert calls_vs_accuracy.li_schedule(36, 100) == ((20, 10, 5, 1), (4, 10, 20, 100))
    assert calls_vs_accuracy.li_schedule(36, 8) == ((20, 10, 5, 1), (2, 3, 4, 8))  # small budgets stay increasing


def test_calls_vs_accuracy_runs_on_a_tiny_pipeline(tiny_epsilon_pipeline, tmp_path):
    out = tmp_path / "bench"
    calls_vs_accuracy.main(["--pretrained", tiny_epsilon_pipeline, "--tasks", "shape", "--images", "4",
                            "--budgets", "4", "8", "--p_values", "0.1", "--min_draws", "4", "--prefilter_k", "3",
                            "--out", str(out), "--device", "cpu"])
    rows = json.loads((out / "rows.json").read_text())
    names = [row["name"] for row in rows]
    assert names[:6] == ["CLIP pre-filter model alone (top-1)", "fixed 8", "fixed 4",
                         "defaults: guaranteed delta=0.01 min=8 growth=1.25 max=8", "t-test paired p=0.1 min=4",
                         "t-test pooled p=0.1 min=4"]
    assert names[6].startswith("Li schedule") and names[-1].startswith("CLIP top-3 + Li schedule")
    by_name = {row["name"]: row for row in rows}
    assert by_name["fixed 8"]["calls_per_image"] == 6 * 8 and by_name["fixed 4"]["calls_per_image"] == 6 * 4
    assert by_name["CLIP top-3 + fixed 8"]["calls_per_image"] == 3 * 8  # only the shortlist is scored
    assert by_name["CLIP pre-filter model alone (top-1)"]["calls_per_image"] == 0
    assert all((row["accuracy"] * 4) % 1 == 0 for row in rows)  # fractions of exactly the 4 images asked for
    text = (out / "table.md").read_text()
    assert (out / "calls_vs_accuracy.png").stat().st_size > 1000 and "| shape |" in text and "Targets:" in text


def test_defaults_row_allocates_as_a_run_without_flags():
    from clip_benchmark_diffusion.settings import ScorerSettings

    base = ScorerSettings(strategy="fixed", templates="average_errors", draws=256)
    configs = list(calls_vs_accuracy.configurations(36, [16, 256], [0.1], [4], ["paired"], base))
    default = next(c for c in configs if c.name.startswith("defaults"))
    defaults = ScorerSettings()  # the default rule, its full budget the largest compared
    assert default.settings == base.replace(strategy=defaults.strategy, draws=256, delta=defaults.delta,
                                            look_growth=defaults.look_growth, ttest_p=defaults.ttest_p,
                                            min_draws=defaults.min_draws, round_draws=defaults.round_draws,
                                            ttest_variance=defaults.ttest_variance)
    assert [c.name for c in configs][:2] == ["fixed 256", "fixed 16"]  # the largest budget still fills the cache first
    published = list(calls_vs_accuracy.configurations(6, [16], [0.1], [4], ["paired"], base, ("5@25,1@250",)))
    assert [c.name for c in published if c.family == "Li"] == ["Li schedule 5@2,1@16", "Li schedule 5@25,1@250"]
    assert published[-1].settings.schedule_keep == (5, 1) and published[-1].settings.schedule_draws == (25, 250)


def test_calls_vs_accuracy_reads_a_world_c_root_and_reuses_its_error_cache(tiny_epsilon_pipeline, tmp_path,
                                                                          monkeypatch):
    from clip_benchmark_diffusion.backends.stable_diffusion import StableDiffusionBackend
    from clip_benchmark_diffusion.world.corruptions import write_corrupted_set

    write_corrupted_set(str(tmp_path / "world_c"), "shape", "gaussian_noise", 5, n=5)
    write_corrupted_set(str(tmp_path / "world_c"), "shape", "contrast", 5, n=5)
    cache = tmp_path / "cache.pkl"
    argv = ["--pretrained", tiny_epsilon_pipeline, "--root", str(tmp_path / "world_c" / "shape"), "--sets",
            "contrast/5", "--images", "4", "--budgets", "4", "64", "--p_values", "0.1", "--min_draws", "2",
            "--variances", "pooled", "--prefilter_k", "--error_cache", str(cache), "--device", "cpu"]
    calls_vs_accuracy.main(argv + ["--out", str(tmp_path / "first")])
    first = json.loads((tmp_path / "first" / "rows.json").read_text())
    assert {row["task"] for row in first} == {"shape/contrast/5"}  # only the set asked for
    assert first[0]["name"] == "fixed 64" and first[0]["calls_per_image"] == 6 * 64  # 6 shapes x 64 draws
    import pickle
    assert len(pickle.load(open(cache, "rb"))) == 1 + 4 * 64 * 6  # its settings + every (image, draw, class) error

    def no_model_calls(*args, **kwargs):
        raise AssertionError("a UNet call although every error is in the cache")

    monkeypatch.setattr(StableDiffusionBackend, "predict", no_model_calls)
    li_row = dict(first[0], name="their code", family="Li", calls_per_image=7.0, seconds_per_image=0.5)
    (tmp_path / "li.json").write_text(json.dumps([li_row, dict(li_row, task="another task")]))
    calls_vs_accuracy.main(argv + ["--out", str(tmp_path / "second"), "--extra_rows", str(tmp_path / "li.json")])
    second = json.loads((tmp_path / "second" / "rows.json").read_text())
    assert [(r["name"], r["accuracy"], r["calls_per_image"]) for r in second[:-1]] == \
        [(r["name"], r["accuracy"], r["calls_per_image"]) for r in first]
    assert second[-1]["name"] == "their code" and len(second) == len(first) + 1  # the other task's row is left out
    assert "| shape/contrast/5 | their code | " in (tmp_path / "second" / "table.md").read_text()
    with pytest.raises(SystemExit, match="no corruption set jpeg/3"):
        calls_vs_accuracy.main(argv[:5] + ["jpeg/3"] + argv[6:] + ["--out", str(tmp_path / "third")])


def _row(name, family, accuracy, calls, shortlist=0):
    return calls_vs_accuracy.Row("t", name, family, shortlist, accuracy, calls, 0.0, 0.0, 0.0)


def test_targets_pick_the_cheapest_ttest_within_a_point_and_the_cheapest_li_as_accurate():
    rows = [_row("fixed 64", "fixed", 0.95, 2000), _row("fixed 8", "fixed", 0.95, 250),
            _row("t-test a", "t-test", 0.90, 50), _row("t-test b", "t-test", 0.945, 80),
            _row("t-test c", "t-test", 0.96, 120), _row("Li small", "Li", 0.94, 100), _row("Li big", "Li", 0.95, 200)]
    line = calls_vs_accuracy.targets(rows).splitlines()[2]
    # a is more than a point worse; b is the cheapest within one; Li small is less accurate than b
    assert "| t-test b: 94.5%, 80 | 25.0x | Li big: 95.0%, 200 | 2.5x | Li small: 94.0%, 100 | 1.2x |" in line


def test_gpu_throughput_toy_run_reports_its_figures(tmp_path):
    report = gpu_throughput.main(["--toy", "--device", "cpu", "--batch_sizes", "2", "--repeats", "1",
                                  "--variants", "eager", "channels_last", "--out", str(tmp_path / "t.json")])
    assert [row["variant"] for row in report["rows"]] == ["eager", "channels_last"]
    assert report["unet_parameters"] > 0 and json.loads((tmp_path / "t.json").read_text()) == report
    for row in report["rows"]:
        assert row["unet_calls_per_s"] > 0 and row["gflop_per_call"] > 0
        assert row["fraction_of_peak"] == pytest.approx(row["achieved_tflops"] / report["matmul_peak_tflops"], rel=0.05)
        assert np.isclose(row["seconds_per_10_class_image"], 300 / row["unet_calls_per_s"], rtol=0.01)


def test_headline_costs_count_what_the_issue_measured_by_hand():
    from clip_benchmark_diffusion.benchmarks import headline_costs
    from clip_benchmark_diffusion.settings import ScorerSettings

    rows = {row["dataset"]: row for row in headline_costs.rows()}
    # CIFAR-10: 10 classes x 18 templates x 64 draws before; Li et al.'s 5@50,1@500 is 10 x 50 + 5 x 450
    assert rows["cifar10"]["old_defaults"] == 11520 and rows["cifar10"]["li_schedule"] == 2750
    assert rows["imagenet1k"]["old_defaults"] == 5_120_000 and rows["imagenet1k"]["li_schedule"] == 100_000
    # one prompt per class, every candidate given the whole default budget at most
    assert rows["imagenet1k"]["defaults_most"] == 1000 * ScorerSettings().draws
    assert rows["imagenet1k"]["defaults_fewest"] == 1000 * ScorerSettings().min_draws


def test_host_overhead_toy_run_prints_its_table(capsys):
    from clip_benchmark_diffusion.benchmarks import host_overhead

    results = host_overhead.main(["--scale", "0.05", "--repeats", "1"])
    # 10 classes x 3 draws x 4 images; 50 classes kept 2/1/1 after 1/2/5 draws; 5 classes x 4 templates x 1 draw
    assert [r["rows"] for r in results] == [120, 50 + 2 + 1 * 3, 20]
    for r in results:
        assert r["total_us"] > 0 and r["math_us"] > 0 and abs(r["host_us"] - (r["total_us"] - r["math_us"])) < 1e-6
    text = capsys.readouterr().out
    assert results[0]["noise_us"] > 0  # timed on the noise thread, where the draws are made
    assert "| host work us/row |" in text and "(noise thread)" in text
    assert "| 10 classes x 64 draws, fixed | 120 |" in text and "| 2035 |" in text


def test_the_threshold_table_bounds_what_the_correlation_can_save():
    from scipy import stats

    from clip_benchmark_diffusion.benchmarks.thresholds import max_exceedance, thresholds

    assert abs(max_exceedance(3.0, 1) - stats.norm.sf(3.0)) < 1e-9  # one comparator: the normal tail
    # independent comparators (correlation 0): 1 - (1 - p)^m exactly
    assert abs(max_exceedance(3.0, 20, correlation=1e-12) - (1 - stats.norm.cdf(3.0) ** 20)) < 1e-6
    looks = look_schedule(8, 1.25, 1024)
    row = thresholds(100, looks)
    single = stats.norm.isf(0.01 / len(looks))  # one comparator only
    assert single < row["dunnett"] <= row["bonferroni"] < 1.05 * row["dunnett"]
    assert abs(row["clark_jaini"] - stats.norm.isf(2e-3)) < 1e-12
    # the exact crossing over looks: below the sum over looks, above one look's quantile
    assert stats.norm.isf(0.01 / 99) < row["over_looks"] < row["bonferroni"]


def test_the_crossing_over_looks_is_the_brownian_one():
    from scipy import stats

    from clip_benchmark_diffusion.benchmarks.thresholds import crossing_probability

    assert abs(crossing_probability(2.5, [1.0]) - stats.norm.sf(2.5)) < 1e-12  # one look: the normal tail
    # two looks at t = 1 and 2 (correlation 1/sqrt(2)): the bivariate normal's union
    both = stats.multivariate_normal([0, 0], [[1, 2 ** -0.5], [2 ** -0.5, 1]]).cdf([2.5, 2.5])
    assert abs(crossing_probability(2.5, [1.0, 2.0]) - (1 - both)) < 0.01 * (1 - both)  # the grid: within 1%
    # close looks cross together, far-apart ones nearly add up
    close, apart = crossing_probability(2.5, [1.0, 1.1]), crossing_probability(2.5, [1.0, 1e4])
    assert stats.norm.sf(2.5) < close < crossing_probability(2.5, [1.0, 2.0]) < apart
    assert apart > 1.95 * stats.norm.sf(2.5)
