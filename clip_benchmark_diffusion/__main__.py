"""Command line.

    python -m clip_benchmark_diffusion eval ...   clip_benchmark's CLI, diffusion models registered
                                                  explicitly (no reliance on the start-up hook)
    python -m clip_benchmark_diffusion demo ...   the reference-world experiments (see `demo.py`)
    python -m clip_benchmark_diffusion replay RECORD [--set name=value ...]
                                                  re-decide a record under other strategy settings,
                                                  without a model (see `replay.py`)
"""
from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from .demo import main as demo

        demo(argv[1:])
        return 0
    if argv[:1] == ["replay"]:
        from .replay import main as replay

        return replay(argv[1:])
    from .registration import register

    register()
    from clip_benchmark import cli

    sys.argv = ["clip_benchmark"] + argv
    result = cli.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
