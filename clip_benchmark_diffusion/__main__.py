"""`python -m clip_benchmark_diffusion eval ...`: clip_benchmark's CLI with diffusion models
registered explicitly (no reliance on the start-up hook)."""
from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .registration import register

    register()
    from clip_benchmark import cli

    sys.argv = ["clip_benchmark"] + argv
    result = cli.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
