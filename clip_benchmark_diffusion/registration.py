"""Teach the unmodified clip_benchmark CLI about diffusion models: the public entry point.

`register()` patches clip_benchmark in memory (its files are never touched); what is patched and
how the plugin steps aside when clip_benchmark changed is in `integration/patches.py`, the flags
in `integration/flags.py`, the state a run shares in `integration/run.py`.

It runs automatically through a `.pth` import hook (see `_autoregister.py`; switch off with
CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER=0), or explicitly via `python -m clip_benchmark_diffusion`.
"""
from __future__ import annotations

from typing import Any

from .integration.patches import disabled_reason, patch_once

#: the clip_benchmark modules the start-up hook hands over once imported
PATCHED_MODULES = ("clip_benchmark.models", "clip_benchmark.cli")


def register_module(module: Any) -> None:
    """Patch one freshly imported clip_benchmark module (called by the import hook)."""
    if getattr(module, "__name__", "") in PATCHED_MODULES:
        patch_once(module)


def register() -> bool:
    """Register explicitly (idempotent): for `python -m clip_benchmark_diffusion` and Python use.
    Returns False (after one warning) when this clip_benchmark cannot be served."""
    import clip_benchmark.cli
    import clip_benchmark.models

    patch_once(clip_benchmark.models)
    patch_once(clip_benchmark.cli)
    return disabled_reason() is None
