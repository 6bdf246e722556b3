"""What the start-up hook costs every Python process of the environment.

    python -m clip_benchmark_diffusion.benchmarks.startup_cost [--runs 30]

Starts `python -X importtime -c pass` repeatedly (bytecode writing on, as for a user) and
reports the hook's own import time (`clip_benchmark_diffusion._autoregister`, the package
included), as the minimum and median over runs: the minimum is the cost on a quiet machine,
the median what a busy one sees. setuptools' editable-install finder, which only editable
(`pip install -e`) installs have, is reported on its own line: it is not the plugin's code.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

HOOK_MODULE = "clip_benchmark_diffusion._autoregister"


def import_times(runs: int) -> dict[str, list[float]]:
    """Milliseconds of cumulative import time per module of interest, one value per run."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pattern = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|\s+(\S+)")
    found: dict[str, list[float]] = {}
    for _ in range(runs + 1):  # the first run may write bytecode: not counted
        output = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=environment,
                                capture_output=True, text=True, check=True).stderr
        for cumulative, module in pattern.findall(output):
            if module == HOOK_MODULE or module.startswith("__editable__"):
                found.setdefault(module, []).append(int(cumulative) / 1000)
    return {module: values[1:] for module, values in found.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    times = import_times(args.runs)
    if HOOK_MODULE not in times:
        print("the start-up hook did not run: is the package installed, and "
              "CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER unset?")
        return
    print("| module | min ms | median ms | runs |\n| --- | --- | --- | --- |")
    for module, values in sorted(times.items()):
        label = module if module == HOOK_MODULE else f"{module} (setuptools, editable installs only)"
        print(f"| {label} | {min(values):.2f} | {statistics.median(values):.2f} | {len(values)} |")


if __name__ == "__main__":
    main()
