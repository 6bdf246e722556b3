"""Command line: `python -m clip_benchmark_diffusion COMMAND ...` (`--help` lists the commands)."""
from __future__ import annotations

import importlib
import sys
from typing import Optional

#: command -> (module, function, one-line description); eval and build are clip_benchmark's own
COMMANDS = {
    "eval": (None, None, "clip_benchmark eval, diffusion models registered (e.g. --model sd-diffusion "
                         "--pretrained ref-world --dataset wds/NAME --dataset_root DIR)"),
    "build": (None, None, "clip_benchmark build: one CSV from result JSONs"),
    "folder-to-wds": ("clip_benchmark_diffusion.datasets", "folder_to_wds_main",
                      "turn a folder of class subfolders into a clip_benchmark webdataset (your own images)"),
    "demo": ("clip_benchmark_diffusion.demo", "main",
             "the shipped reference models next to CLIP, offline on CPU, with a side-by-side table"),
    "report": ("clip_benchmark_diffusion.report.__main__", "main",
               "an HTML report (tables with intervals, paired tests, figures) of a results folder"),
    "probes": ("clip_benchmark_diffusion.probes.__main__", "main",
               "probes beyond accuracy: shape bias, attribute binding, corruption robustness, ..."),
    "world": ("clip_benchmark_diffusion.world.__main__", "main",
              "write the procedural reference world's datasets (train and test sets)"),
    "weighting": ("clip_benchmark_diffusion.weighting", "main",
                  "fit per-timestep-bucket weights from records (for --diffusion_objective x0_buckets)"),
    "replay": ("clip_benchmark_diffusion.replay", "main",
               "re-decide a record under other strategy settings, without a model"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m clip_benchmark_diffusion COMMAND [options]   (COMMAND --help for its options)", "",
             "Text-to-image diffusion models as zero-shot classifiers inside clip_benchmark.", "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, _, description) in COMMANDS.items()]
    lines += ["", "`clip_benchmark eval ...` works the same once the package is installed."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command = argv[0]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"python -m clip_benchmark_diffusion: error: unknown command {command!r}{hint} (commands: "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[command]
    if module_name is not None:
        result = getattr(importlib.import_module(module_name), function)(argv[1:])
        return result if isinstance(result, int) else 0
    from .registration import register

    register()
    from clip_benchmark import cli

    sys.argv = ["clip_benchmark"] + argv
    result = cli.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
