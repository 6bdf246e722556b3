"""CLI: ``python -m clip_benchmark_diffusion.world --out DIR [--n-train N] [--n-test M] [--seed S] [--tasks ...]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .scenes import TASKS
from .writer import write_all


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Write the training set and the chosen test sets, print where they went, and return the paths."""
    parser = argparse.ArgumentParser(
        prog="python -m clip_benchmark_diffusion.world",
        description="Generate the procedural reference world as clip_benchmark wds datasets.",
    )
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per dataset)")
    parser.add_argument("--n-train", type=int, default=10000, help="number of training samples (default: 10000)")
    parser.add_argument("--n-test", type=int, default=1200, help="number of samples per test set (default: 1200)")
    parser.add_argument("--seed", type=int, default=0, help="training seed; test sets use seed+1 (default: 0)")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="test sets to write (default: all)"
    )
    args = parser.parse_args(argv)
    if args.n_train < 0 or args.n_test < 0 or args.seed < 0:
        parser.error("--n-train, --n-test and --seed must be non-negative")
    paths = write_all(args.out, args.n_train, args.n_test, seed=args.seed, tasks=args.tasks)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main()
