"""Reports that say how sure they are: Wilson intervals and exact McNemar p-values against values
computed by hand, the paired table, per-image predictions of CLIP runs, and plot labels that do not
overlap."""
import json
import math

import pytest

from clip_benchmark_diffusion.report.__main__ import main as report_main
from clip_benchmark_diffusion.report.collect import RunCost, read_results
from clip_benchmark_diffusion.report.plots import cost_figure
from clip_benchmark_diffusion.report.stats import mcnemar_exact, wilson_interval
from clip_benchmark_diffusion.report.tables import paired_table


def test_wilson_interval_matches_the_formula_worked_by_hand():
    # 8 of 10: p = 0.8, z = 1.95996; centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71674,
    # half width z sqrt(0.016 + z^2/400) / (1 + z^2/10) = 0.22658
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    # 0 of 5: the lower end is 0 and the upper end z^2/5 / (1 + z^2/5) = 0.43448
    assert wilson_interval(0, 5) == pytest.approx((0.0, 0.43448), abs=1e-5)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_exact_mcnemar_p_values_match_binomial_sums_by_hand():
    # 1 vs 9 discordant images: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    test = mcnemar_exact([1] + [0] * 9 + [1] * 5, [0] + [1] * 9 + [1] * 5)
    assert (test.n, test.only_a, test.only_b) == (15, 1, 9)
    assert test.p_value == pytest.approx(22 / 1024) and test.significant
    # the examples on 100 images: 97% vs 80% (17 vs 0 discordant) is significant ...
    a, b = [1] * 97 + [0] * 3, [1] * 80 + [0] * 20
    assert mcnemar_exact(a, b).p_value == pytest.approx(2 / 2 ** 17)
    # ... 68% vs 66% (10 vs 8 discordant) is not: p = 2 * sum_{k<=8} C(18,k) / 2^18 = 0.8145
    a = [1] * 58 + [1] * 10 + [0] * 8 + [0] * 24
    b = [1] * 58 + [0] * 10 + [1] * 8 + [0] * 24
    test = mcnemar_exact(a, b)
    assert (test.only_a, test.only_b) == (10, 8)
    assert test.p_value == pytest.approx(2 * sum(math.comb(18, k) for k in range(9)) / 2 ** 18)
    assert test.p_value == pytest.approx(0.8145, abs=1e-4) and not test.significant
    assert mcnemar_exact([1, 0], [1, 0]).p_value == 1.0
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact([1], [1, 0])


def _write(folder, name, data, lines=None, suffix=".predictions.jsonl"):
    (folder / f"{name}.json").write_text(json.dumps({"language": "en", **data}))
    if lines is not None:
        (folder / f"{name}{suffix}").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_report_pairs_models_on_the_same_images_and_hides_trivial_image_accuracy(tmp_path):
    labels = [i % 3 for i in range(100)]
    clip = [label if i < 97 else (label + 1) % 3 for i, label in enumerate(labels)]
    sd = [label if i < 80 else (label + 1) % 3 for i, label in enumerate(labels)]
    for name, model, predictions in (("clip", "ViT-B-32", clip), ("sd", "sd-diffusion", sd)):
        _write(tmp_path, name, {"dataset": "cifar10", "model": model, "pretrained": "x", "task":
                                "zeroshot_classification", "metrics": {"acc1": sum(
                                    p == t for p, t in zip(predictions, labels)) / 100}},
               [{"index": i, "prediction": p, "label": t} for i, (p, t) in enumerate(zip(predictions, labels))])
    _write(tmp_path, "binding", {"dataset": "wds/binding", "model": "ViT-B-32", "pretrained": "x",
                                 "task": "image_caption_selection",
                                 "metrics": {"image_acc": 1.0, "text_acc": 0.6, "acc": 0.6, "instances": 50,
                                             "images_per_instance": 1}})
    table = paired_table(read_results(str(tmp_path)))
    assert table.rows == [["cifar10", "ViT-B-32 x", "97.0", "sd-diffusion x", "80.0", "100", "17", "0",
                           f"{2 / 2 ** 17:.3g}", "yes"]]
    out = tmp_path / "report"
    assert report_main([str(tmp_path), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Paired comparisons (exact McNemar)" in markdown
    low, high = wilson_interval(30, 50)
    assert f"| wds/binding (text_acc) | 60.0 [{100 * low:.1f}–{100 * high:.1f}] |" in markdown
    assert "97.0 [" in markdown and "80.0 [" in markdown
    leaderboard = (out / "leaderboard.csv").read_text().splitlines()
    header = leaderboard[0].split(",")
    binding = next(line.split(",") for line in leaderboard if "wds/binding" in line)
    assert binding[header.index("image_acc")] == "" and binding[header.index("ci95_n")] == "50"


def test_clip_benchmark_eval_of_a_clip_model_keeps_per_image_predictions(tmp_path):
    """With the plugin installed, a plain CLIP classification run writes X.predictions.jsonl beside its
    result (the report's intervals and paired tests need it); nothing else about the run changes."""
    from clip_benchmark_diffusion.demo import clip_benchmark_eval
    from clip_benchmark_diffusion.report.collect import correctness
    from clip_benchmark_diffusion.world import write_test_set

    root = write_test_set(str(tmp_path / "world"), "shape", 8)
    (tmp_path / "results").mkdir()  # clip_benchmark itself does not create the output folder
    output = str(tmp_path / "results" / "shape_clip.json")
    args = ["--model", "ref-world-clip", "--pretrained", "ref-world", "--dataset", "wds/shape", "--dataset_root", root,
            "--num_workers", "0", "--output", output, "--quiet"]
    clip_benchmark_eval(args)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["shape_clip.json",
                                                                         "shape_clip.predictions.jsonl"]
    result = read_results(str(tmp_path / "results"))[0]
    correct = correctness(result)
    assert len(correct) == 8 and sum(correct) / 8 == pytest.approx(result.metrics["acc1"])


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_accuracy_vs_calls_labels_overlap_neither_each_other_nor_the_title():
    # near-identical runs: the old per-point annotations were drawn on top of each other and of the title
    costs = [RunCost(f"r{i}.diffusion.jsonl", "sd-diffusion ref-world", dataset, 10, calls, calls, calls, None,
                     accuracy, {"strategy": strategy, "draws": 64})
             for i, (dataset, calls, accuracy, strategy) in enumerate([
                 ("wds/shape", 384, 0.99, "fixed"), ("wds/shape", 380, 0.99, "ttest"), ("wds/colour", 390, 1.0, "fixed"),
                 ("wds/colour_shape", 2304, 0.98, "fixed"), ("wds/colour_shape", 99, 0.98, "ttest")])]
    figure = cost_figure(costs, [])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axis = figure.axes[0]
    legend = axis.get_legend()
    texts = [axis.title, axis.xaxis.label, axis.yaxis.label, *legend.get_texts(), legend.get_title()]
    texts += [t for t in axis.get_xticklabels() + axis.get_yticklabels() if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
    assert len(legend.get_texts()) == 5 and not axis.texts  # every run labelled, none on the axes
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not _overlap(a, b), (a, b)
    # the legend sits beside the axes, below the title's baseline band
    assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1


def test_a_failed_run_leaves_no_predictions_path_for_later_runs(tmp_path):
    from clip_benchmark_diffusion.integration.run import session
    from clip_benchmark_diffusion.demo import clip_benchmark_eval

    with pytest.raises(SystemExit):
        clip_benchmark_eval(["--model", "sd-diffusion", "--pretrained", str(tmp_path / "missing"), "--dataset",
                             "wds/shape", "--dataset_root", str(tmp_path), "--output", str(tmp_path / "r.json")])
    assert session().predictions is None
