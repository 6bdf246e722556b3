"""Build the side-by-side report of a results folder: report.md, report.html, PNGs, leaderboard.csv."""
from __future__ import annotations

import os
from typing import Optional

from .collect import read_costs, read_results
from .leaderboard import write_leaderboard
from .page import Figure, html_page, markdown_page
from .plots import accuracy_plot, binding_plot, cost_plot, robustness_plot, shape_bias_plot
from .tables import cost_table, paired_table, published_table, results_table, shape_bias_table

DEFAULT_TITLE = "Diffusion classifiers vs CLIP"


def build_report(results_dir: str, out_dir: str, title: str = DEFAULT_TITLE) -> dict[str, str]:
    """Write everything into `out_dir`; returns {"markdown", "html", "leaderboard", <figure stem>: path}."""
    results = read_results(results_dir)
    if not results:
        raise FileNotFoundError(f"no clip_benchmark result JSON under {results_dir}")
    costs = read_costs(results_dir)
    os.makedirs(out_dir, exist_ok=True)

    tables = [t for t in (results_table(results), published_table(results), paired_table(results),
                           shape_bias_table(results), cost_table(costs, results)) if t]
    candidates: list[tuple[str, str, Optional[bytes]]] = [
        ("accuracy.png", "Accuracy per dataset and model", accuracy_plot(results)),
        ("shape_bias.png", "Shape vs texture decisions per class (Geirhos et al. 2019 style)",
         shape_bias_plot(results)),
        ("binding.png", "Attribute binding accuracy per task vs chance", binding_plot(results)),
        ("accuracy_vs_calls.png", "Accuracy vs mean UNet calls per image", cost_plot(costs, results)),
        ("robustness.png", "Accuracy per corruption severity (world-C / ImageNet-C style)", robustness_plot(results)),
    ]
    figures = [Figure(name, caption, png) for name, caption, png in candidates if png is not None]

    paths = {"markdown": os.path.join(out_dir, "report.md"), "html": os.path.join(out_dir, "report.html"),
             "leaderboard": os.path.join(out_dir, "leaderboard.csv")}
    for figure in figures:
        paths[os.path.splitext(figure.file_name)[0]] = os.path.join(out_dir, figure.file_name)
        with open(os.path.join(out_dir, figure.file_name), "wb") as handle:
            handle.write(figure.png)
    source = os.path.abspath(results_dir)
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(markdown_page(title, source, tables, figures))
    with open(paths["html"], "w", encoding="utf-8") as handle:
        handle.write(html_page(title, source, tables, figures))
    write_leaderboard(results, paths["leaderboard"])
    return paths
