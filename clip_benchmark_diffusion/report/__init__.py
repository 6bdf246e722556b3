"""Side-by-side report of CLIP and diffusion results from clip_benchmark result folders.

`python -m clip_benchmark_diffusion.report RESULTS_DIR --out OUT_DIR` writes `report.md`,
a self-contained `report.html`, PNG figures and a `leaderboard.csv` whose columns match
`clip_benchmark build`. Modules: `collect` (reading), `tables`, `plots`, `page` (markdown /
HTML documents), `leaderboard` (CSV), `build` (all of it).
"""
from .build import build_report

__all__ = ["build_report"]
