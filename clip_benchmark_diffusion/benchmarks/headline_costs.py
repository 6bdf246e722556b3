"""UNet calls per image of the README's headline commands, from the strategies' own cost bounds.

    python -m clip_benchmark_diffusion.benchmarks.headline_costs

For each dataset: clip_benchmark's own template count (its packaged English templates) and the
class count, then the calls per image under this package's defaults (fewest and most: the t-test
stops when the evidence is in, so what an image costs lies between them), under the defaults of
earlier versions (fixed 64 draws, every template scored), and under Li et al.'s published
keep-list schedule for that dataset (one prompt per class, as in their code). Nothing is run:
these are the counts the cost preview prints before a run.
"""
from __future__ import annotations

import json
import os

from ..settings import ScorerSettings
from ..strategies import call_bounds

#: classes of datasets whose class names clip_benchmark takes from the dataset itself
CLASS_COUNTS = {"cifar10": 10, "stl10": 10, "pets": 37, "food101": 101, "imagenet1k": 1000}
#: Li et al.'s adaptive schedules (classes kept, cumulative draws per class)
LI_SCHEDULES = {"cifar10": ((5, 1), (50, 500)), "pets": ((5, 1), (25, 250)), "stl10": ((5, 1), (100, 500)),
                "food101": ((20, 10, 5, 1), (20, 50, 100, 500)),
                "imagenet1k": ((500, 50, 10, 1), (50, 100, 500, 1000))}
#: what `--model sd-diffusion` cost per image before the defaults changed
OLD_DEFAULTS = ScorerSettings(strategy="fixed", draws=64, templates="average_errors")


def clip_benchmark_templates() -> dict[str, list[str]]:
    import clip_benchmark.datasets

    path = os.path.join(os.path.dirname(clip_benchmark.datasets.__file__), "en_zeroshot_classification_templates.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def rows() -> list[dict]:
    templates = clip_benchmark_templates()
    defaults = ScorerSettings()
    table = []
    for dataset, classes in CLASS_COUNTS.items():
        count = len(templates.get(dataset, templates["imagenet1k"]))
        rows_per_class = count if defaults.templates == "average_errors" else 1
        now = call_bounds(defaults, classes, rows_per_class)
        before = call_bounds(OLD_DEFAULTS, classes, count)
        keep, draws = LI_SCHEDULES[dataset]
        li = call_bounds(ScorerSettings(strategy="schedule", schedule_keep=keep, schedule_draws=draws), classes, 1)
        table.append({"dataset": dataset, "classes": classes, "templates": count, "defaults_fewest": now.fewest,
                      "defaults_most": now.most, "old_defaults": before.most, "li_schedule": li.most,
                      "li_stages": ",".join(f"{k}@{d}" for k, d in zip(keep, draws))})
    return table


def main() -> None:
    defaults = ScorerSettings()
    print(f"defaults: strategy {defaults.strategy} (delta {defaults.delta}, first test after {defaults.min_draws} "
          f"draws, at most {defaults.draws}), templates {defaults.templates}\n")
    print("| dataset | classes | templates | defaults: fewest - most calls | earlier defaults (fixed 64, every "
          "template) | Li et al.'s schedule | its calls |\n|---|---|---|---|---|---|---|")
    for row in rows():
        print(f"| {row['dataset']} | {row['classes']} | {row['templates']} | {row['defaults_fewest']:,} - "
              f"{row['defaults_most']:,} | {row['old_defaults']:,} | {row['li_stages']} | {row['li_schedule']:,} |")


if __name__ == "__main__":
    main()
