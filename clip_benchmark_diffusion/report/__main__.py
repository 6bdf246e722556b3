"""`python -m clip_benchmark_diffusion.report RESULTS_DIR --out OUT_DIR [--title TITLE]`."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .build import DEFAULT_TITLE, build_report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_benchmark_diffusion.report",
                                     description="report of clip_benchmark result JSONs and diffusion records")
    parser.add_argument("results_dir", help="folder of result JSONs (searched recursively) and *.diffusion.jsonl")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--title", default=DEFAULT_TITLE)
    args = parser.parse_args(argv)
    try:
        paths = build_report(args.results_dir, args.out, args.title)
    except FileNotFoundError as error:
        print(f"clip_benchmark_diffusion.report: error: {error}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
