"""`--diffusion_protocol`: each paper's settings per dataset, resolved when each dataset's run starts
(one command runs a suite), explicit flags overriding and recorded, and the protocol in the record
header, the result JSON and the leaderboard."""
import csv
import json
import os

import pytest

from clip_benchmark_diffusion import protocols
from clip_benchmark_diffusion.protocols import FIRST_TEMPLATE, PROTOCOLS, dataset_keys
from clip_benchmark_diffusion.records import read_records
from clip_benchmark_diffusion.integration.flags import (FLAG_SETTINGS, diffusion_argument_parser, explicit_flags,
                                                      settings_for_dataset)
from clip_benchmark_diffusion.settings import ScorerSettings
from test_cli import in_process_error
from test_records import run_in_process

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmark_configs")


def resolved(argv, dataset, seed=0):
    """What a dataset's run gets from a command line's `--diffusion_*` flags."""
    options, _ = diffusion_argument_parser().parse_known_args(argv)
    options.diffusion_explicit = explicit_flags(argv)
    return settings_for_dataset(options, seed, dataset)


# ---------------------------------------------------------------------------------------- the table
#: the papers' protocols written out once more, by hand, from ANCHORS.md and issue 23 (not from the table)
LI_COMMON = dict(objective="epsilon", loss="l2", timesteps="stratified", t_min=0, t_max=None, strategy="schedule")
LI_KEEP = {"cifar10": ((5, 1), (50, 500)), "pets": ((5, 1), (25, 250)), "stl10": ((5, 1), (100, 500)),
           "food101": ((20, 10, 5, 1), (20, 50, 100, 500)), "fgvc_aircraft": ((20, 10, 5, 1), (20, 50, 100, 500)),
           "flowers": ((20, 10, 5, 1), (20, 50, 100, 500)),
           "imagenet1k": ((500, 50, 10, 1), (50, 100, 500, 1000)),
           "objectnet": ((500, 50, 10, 1), (50, 100, 500, 1000))}
CLARK = dict(objective="x0_heuristic", heuristic_rate=7.0, loss="l2", timesteps="uniform", strategy="ttest",
             ttest_variance="paired", ttest_p=0.002, min_draws=20, round_draws=4, draws=2000)
SELFBENCH = dict(objective="velocity", loss="l2", timesteps="stratified", strategy="fixed", draws=30,
                 sigma_distribution="model")


@pytest.mark.parametrize("dataset", sorted(LI_KEEP))
def test_li2023_sets_each_datasets_keep_list_and_prompt(dataset):
    settings, record = resolved(["--diffusion_protocol", "li2023"], dataset)
    assert {k: getattr(settings, k) for k in LI_COMMON} == LI_COMMON
    assert (settings.schedule_keep, settings.schedule_draws) == LI_KEEP[dataset]
    assert record["name"] == record["label"] == "li2023" and record["overrides"] == {}
    assert record["rule"] == f"dataset entry '{dataset}'" and record["paper_model"] == "sd2-base"
    with open(os.path.join(CONFIGS, "li_templates.json")) as handle:
        assert [record["prompt"]] == json.load(handle)[dataset]
    assert record["implied"] == settings.to_dict()


@pytest.mark.parametrize("protocol, expected, templates", [("clark2023", CLARK, "clark_jaini_templates.json"),
                                                           ("selfbench2025", SELFBENCH, None)])
def test_clark2023_and_selfbench2025_set_the_same_scoring_on_every_dataset(protocol, expected, templates):
    table = PROTOCOLS[protocol]["datasets"]
    prompts = json.load(open(os.path.join(CONFIGS, templates))) if templates else {}
    assert sorted(table) == sorted(prompts)  # the table covers exactly the datasets the suite runs
    for dataset in list(table) + ["wds/shape", "sun397"]:
        settings, record = resolved(["--diffusion_protocol", protocol], dataset)
        assert {k: getattr(settings, k) for k in expected} == expected, dataset
        assert record["overrides"] == {} and record["implied"] == settings.to_dict()
        assert [record["prompt"]] == prompts.get(dataset, [FIRST_TEMPLATE]), dataset


def test_other_datasets_get_the_stated_general_rule_and_names_are_matched_like_clip_benchmark():
    settings, record = resolved(["--diffusion_protocol", "li2023"], "wds/shape")
    general = PROTOCOLS["li2023"]["general"]
    assert record["rule"] == "general rule" and record["prompt"] == FIRST_TEMPLATE and general["source"]
    assert (list(settings.schedule_keep), list(settings.schedule_draws)) == \
        (general["settings"]["schedule_keep"], general["settings"]["schedule_draws"])
    assert dataset_keys("wds/vtab/pets") == ["wds/vtab/pets", "vtab/pets", "pets"]
    assert resolved(["--diffusion_protocol", "li2023"], "wds/vtab/pets")[0].schedule_draws == (25, 250)
    assert resolved(["--diffusion_protocol", "clark2023"], "vtab/svhn")[1]["prompt"].startswith("a photo of the num")


def test_every_entry_names_its_source_and_default_sets_nothing():
    for name, protocol in PROTOCOLS.items():
        assert protocol["source"] and protocol["general"]["source"], name
        for dataset, entry in protocol["datasets"].items():
            assert entry["source"] and entry["prompt"], (name, dataset)
    for argv in ([], ["--diffusion_protocol", "default"]):
        settings, record = resolved(argv, "cifar10")
        assert settings == ScorerSettings() and record["name"] == record["label"] == "default"
        assert record["prompt"] == protocols.ALL_TEMPLATES and record["overrides"] == {}


# ---------------------------------------------------------------------------------------- overrides
def test_explicit_flags_override_the_protocol_and_are_recorded():
    settings, record = resolved(["--diffusion_protocol", "li2023", "--diffusion_loss", "l1"], "pets")
    assert settings.loss == "l1" and settings.schedule_draws == (25, 250)  # the rest of the protocol stays
    assert record["overrides"] == {"loss": "l1"} and record["label"] == "li2023 [loss=l1]"
    assert record["implied"]["loss"] == "l2"
    # a flag at its default value is still explicit: it wins over the protocol's x0_heuristic
    settings, record = resolved(["--diffusion_protocol", "clark2023", "--diffusion_objective", "epsilon"], "cifar10")
    assert settings.objective == "epsilon" and record["overrides"] == {"objective": "epsilon"}
    # a flag equal to the protocol's value is no override
    assert resolved(["--diffusion_protocol", "li2023", "--diffusion_loss", "l2"], "pets")[1]["overrides"] == {}
    # another strategy: the protocol's keep-list does not apply; speed settings stay out of the label
    settings, record = resolved(["--diffusion_protocol", "li2023", "--diffusion_strategy", "fixed",
                                 "--diffusion_batch_size", "8"], "cifar10")
    assert settings.strategy == "fixed" and settings.schedule_keep == () and settings.batch_size == 8
    assert record["overrides"]["batch_size"] == 8 and "batch_size" not in record["label"]
    assert record["label"] == "li2023 [schedule_draws=none, schedule_keep=none, strategy=fixed]"
    # --diffusion_schedule replaces the keep-list only
    settings, record = resolved(["--diffusion_protocol", "li2023", "--diffusion_schedule", "2@4,1@8"], "cifar10")
    assert (settings.schedule_keep, settings.schedule_draws, settings.objective) == ((2, 1), (4, 8), "epsilon")
    assert record["label"] == "li2023 [schedule_draws=4,8, schedule_keep=2,1]"


def test_unknown_protocol_is_one_line_listing_the_known_ones(tiny_wds, tmp_path, capsys, monkeypatch):
    args = ["eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--dataset", "wds/animals",
            "--dataset_root", tiny_wds, "--diffusion_protocol", "li2024", "--output", "out.json"]
    message = in_process_error(args, tmp_path, capsys, monkeypatch)
    assert "unknown --diffusion_protocol 'li2024'" in message
    assert all(name in message for name in ("li2023", "clark2023", "selfbench2025", "default"))
    assert "li2023, clark2023, selfbench2025" in " ".join(diffusion_argument_parser().format_help().split())


# ---------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def li_suite(tmp_path_factory):
    """One command, Li et al.'s protocol, two datasets of different keep-lists: world test sets named
    like Li's datasets (`wds/cifar10`: 5@50,1@500; `wds/pets`: 5@25,1@250), capped at 200 calls per
    image (an explicit override, recorded) so it takes seconds."""
    from clip_benchmark_diffusion.world import write_test_set

    root = tmp_path_factory.mktemp("li_world")
    for task, name in (("shape", "cifar10"), ("colour", "pets")):
        os.rename(write_test_set(str(root), task, 2), root / name)
    cwd = tmp_path_factory.mktemp("li_run")
    monkeypatch = pytest.MonkeyPatch()
    code, _ = run_in_process(
        ["eval", "--model", "sd-diffusion", "--pretrained", "ref-world", "--dataset", "wds/cifar10", "wds/pets",
         "--dataset_root", str(root / "{dataset}"), "--num_workers", "0", "--batch_size", "2",
         "--diffusion_protocol", "li2023", "--diffusion_max_calls", "200", "--diffusion_no_progress",
         "--output", "{dataset}_{pretrained}_{model}.json"], cwd, None, monkeypatch)
    monkeypatch.undo()
    assert code == 0
    return cwd


def test_li_suite_runs_two_datasets_in_one_command_each_record_with_its_own_keep_list(li_suite):
    for dataset, keep, first_prompt in (("cifar10", ((5, 1), (50, 500)), "a photo of a circle."),
                                        ("pets", ((5, 1), (25, 250)), "a photo of a red object, a type of pet.")):
        record = read_records(str(li_suite / f"{dataset}_ref-world_sd-diffusion.diffusion.jsonl"))
        header = record["header"]
        assert (tuple(header["settings"]["schedule_keep"]), tuple(header["settings"]["schedule_draws"])) == keep
        protocol = header["protocol"]
        assert protocol["name"] == "li2023" and protocol["rule"] == f"dataset entry '{dataset}'"
        assert protocol["overrides"] == {"max_calls": 200} and protocol["label"] == "li2023 [max_calls=200]"
        assert header["candidates"][0] == [first_prompt]  # the protocol's prompt, not the world's "a {c}"
        assert len(record["images"]) == 2 and all(image["calls"] <= 200 for image in record["images"])
        result = json.loads((li_suite / f"{dataset}_ref-world_sd-diffusion.json").read_text())
        assert result["protocol"] == "li2023 [max_calls=200]"
        assert result["diffusion"]["protocol"] == protocol and result["diffusion"]["settings"] == header["settings"]
    # pets' first stage (6 classes x 25 draws) fits in the cap: one class is dropped after 25 draws;
    # cifar10's (6 x 50) does not: every class stops together at the cap, before 50
    pets = read_records(str(li_suite / "pets_ref-world_sd-diffusion.diffusion.jsonl"))["images"]
    cifar = read_records(str(li_suite / "cifar10_ref-world_sd-diffusion.diffusion.jsonl"))["images"]
    assert all(sorted(image["draws"])[:2] == [25, 35] and image["survivors_per_round"][0] == 5 for image in pets)
    assert all(min(image["draws"]) == max(image["draws"]) < 50 and image["capped"] for image in cifar)


def test_leaderboard_and_clip_benchmark_build_have_the_protocol_column(li_suite, tmp_path):
    from argparse import Namespace

    from clip_benchmark.cli import main_build

    from clip_benchmark_diffusion.report.build import build_report

    paths = build_report(str(li_suite), str(tmp_path / "report"))
    with open(paths["leaderboard"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["protocol"] for row in rows] == ["li2023 [max_calls=200]"] * 2
    markdown = open(paths["markdown"]).read()
    assert "sd-diffusion ref-world · li2023 [max_calls=200]" in markdown
    published = markdown.split("## Against the papers' published numbers", 1)[1]
    assert "SD 2.0-base 88.5; CLIP RN50 75.6; OpenCLIP ViT-H/14 97.3" in published  # cifar10
    assert "| no (paper: sd2-base) | max_calls |" in published
    main_build(Namespace(files=sorted(str(p) for p in li_suite.glob("*.json")), output=str(tmp_path / "b.csv")))
    with open(tmp_path / "b.csv", newline="") as handle:
        assert {row["protocol"] for row in csv.DictReader(handle)} == {"li2023 [max_calls=200]"}


def test_report_keeps_rows_of_different_protocols_apart(tmp_path):
    from clip_benchmark_diffusion.report.collect import read_results
    from clip_benchmark_diffusion.report.tables import paired_table, results_table

    labels = [i % 2 for i in range(20)]
    for name, protocol, wrong in (("a", "li2023", 2), ("b", "clark2023", 6), ("c", None, 4)):
        predictions = [1 - t if i < wrong else t for i, t in enumerate(labels)]
        data = {"dataset": "cifar10", "model": "sd-diffusion", "pretrained": "sd2-base", "task":
                "zeroshot_classification", "metrics": {"acc1": 1 - wrong / 20}, "language": "en"}
        if protocol:
            data["protocol"] = protocol
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        (tmp_path / f"{name}.predictions.jsonl").write_text("".join(
            json.dumps({"index": i, "prediction": p, "label": t}) + "\n" for i, (p, t) in enumerate(zip(predictions,
                                                                                                      labels))))
    results = read_results(str(tmp_path))
    table = results_table(results)
    assert table.header[1:] == ["sd-diffusion sd2-base", "sd-diffusion sd2-base · clark2023",
                                "sd-diffusion sd2-base · li2023"]
    assert table.rows == [["cifar10 (acc1)", "80.0 [58.4–91.9]", "70.0 [48.1–85.5]", "90.0 [69.9–97.2]"]]
    assert "protocol" in table.note
    pairs = paired_table(results)
    assert {(row[1], row[3]) for row in pairs.rows} == {
        ("sd-diffusion sd2-base", "sd-diffusion sd2-base · clark2023"),
        ("sd-diffusion sd2-base", "sd-diffusion sd2-base · li2023"),
        ("sd-diffusion sd2-base · clark2023", "sd-diffusion sd2-base · li2023")}
    assert "different protocols" in pairs.note


def test_first_template_rule_and_a_custom_template_file_that_differs_is_an_override(tiny_epsilon_pipeline, tiny_wds,
                                                                                    tmp_path, capsys, monkeypatch):
    """Clark & Jaini on a dataset they did not use: the dataset's first template only (tiny_wds has two);
    a --custom_template_file with other prompts wins and the record says so."""
    base = ["eval", "--model", "sd-diffusion", "--pretrained", tiny_epsilon_pipeline, "--dataset", "wds/animals",
            "--dataset_root", tiny_wds, "--num_workers", "0", "--batch_size", "6", "--diffusion_protocol",
            "clark2023", "--diffusion_draws", "4", "--diffusion_min_draws", "2", "--diffusion_no_progress"]
    code, _ = run_in_process([*base, "--output", "first.json"], tmp_path, capsys, monkeypatch)
    header = read_records(str(tmp_path / "first.diffusion.jsonl"))["header"]
    assert code == 0 and header["candidates"] == [["a photo of a cat."], ["a photo of a dog."], ["a photo of a bird."]]
    assert header["protocol"]["overrides"] == {"draws": 4, "min_draws": 2}
    assert header["settings"]["objective"] == "x0_heuristic" and header["settings"]["timesteps"] == "uniform"
    (tmp_path / "prompts.json").write_text(json.dumps({"animals": ["an image of a {c}."]}))
    code, _ = run_in_process([*base, "--custom_template_file", "prompts.json", "--output", "custom.json"], tmp_path,
                             capsys, monkeypatch)
    header = read_records(str(tmp_path / "custom.diffusion.jsonl"))["header"]
    assert code == 0 and header["candidates"][0] == ["an image of a cat."]
    assert header["protocol"]["overrides"]["prompt"] == ["an image of a {c}."]
    assert "prompt=an image of a {c}." in json.loads((tmp_path / "custom.json").read_text())["protocol"]


def test_docs_table_lists_each_entry_as_the_package_table_has_it():
    with open(os.path.join(os.path.dirname(CONFIGS), "docs", "protocols.md"), encoding="utf-8") as handle:
        docs = handle.read()
    for name in PROTOCOLS:
        assert f"| `{name}` |" in docs
    for dataset, entry in PROTOCOLS["li2023"]["datasets"].items():
        keep = ",".join(f"{k}@{d}" for k, d in zip(entry["settings"]["schedule_keep"],
                                                   entry["settings"]["schedule_draws"]))
        assert f"| `{dataset}` | `{keep}`" in docs and f"| {entry['published']['SD 2.0-base']} |" in docs
    for dataset, entry in PROTOCOLS["clark2023"]["datasets"].items():
        assert f"| `{dataset}`" in docs and f"| {entry['published']['SD 1.4']} |" in docs


def test_every_settings_flag_is_known_to_the_protocol_resolution():
    """A new `--diffusion_*` flag that sets a scorer setting must say which (else it could not override)."""
    flags = {a.dest for a in diffusion_argument_parser()._actions if a.dest.startswith("diffusion_")}
    assert flags - set(FLAG_SETTINGS) == {"diffusion_no_progress", "diffusion_predictions",
                                                     "diffusion_protocol", "diffusion_records",
                                                     "diffusion_limit"}


def test_li2023_prompts_are_the_canonical_prompts_of_the_single_template_mode():
    from clip_benchmark_diffusion.prompts import CANONICAL_TEMPLATES

    assert {d: e["prompt"] for d, e in PROTOCOLS["li2023"]["datasets"].items()} == CANONICAL_TEMPLATES
