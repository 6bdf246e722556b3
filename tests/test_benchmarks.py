"""The benchmark scripts run end to end at toy size and report what they claim."""
import json

import numpy as np
import pytest

from clip_benchmark_diffusion.benchmarks import calls_vs_accuracy, gpu_throughput
from clip_benchmark_diffusion.benchmarks.calibration import expected_calibration_error, fit_binning


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
                            "--budgets", "4", "8", "--p_values", "0.1", "--min_draws", "4", "--out", str(out), "--device", "cpu"])
    rows = json.loads((out / "rows.json").read_text())
    names = [row["name"] for row in rows]
    assert names[:2] == ["fixed 8", "fixed 4"] and names[2] == "t-test p=0.1 min=4" and names[3].startswith("Li schedule")
    fixed8, fixed4 = rows[0], rows[1]
    assert fixed8["calls_per_image"] == 6 * 8 and fixed4["calls_per_image"] == 6 * 4
    assert all(0 <= row["accuracy"] <= 1 for row in rows)
    assert (out / "calls_vs_accuracy.png").stat().st_size > 1000 and "| shape |" in (out / "table.md").read_text()


def test_gpu_throughput_toy_run_reports_its_figures(tmp_path):
    report = gpu_throughput.main(["--toy", "--device", "cpu", "--batch_sizes", "2", "--repeats", "1",
                                  "--out", str(tmp_path / "t.json")])
    row = report["rows"][0]
    assert row["unet_calls_per_s"] > 0 and row["gflop_per_call"] > 0
    assert row["fraction_of_peak"] == pytest.approx(row["achieved_tflops"] / report["matmul_peak_tflops"], rel=0.05)
    assert np.isclose(row["seconds_per_10_class_image"], 300 / row["unet_calls_per_s"], rtol=0.01)
