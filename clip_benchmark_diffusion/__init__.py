"""Text-to-image diffusion models as zero-shot classifiers inside clip_benchmark.

Public API (imported lazily: this package is imported at every interpreter start by the
registration hook, so importing it imports nothing at all, not even `typing`):

    from clip_benchmark_diffusion import DiffusionScorer, ScorerSettings, load_backend
    backend = load_backend("sd2-base", device="cuda")
    scorer = DiffusionScorer(backend, ScorerSettings(draws=64))
    scores = scorer.score(pixels, [["a photo of a cat."], ["a photo of a dog."]])
"""
__version__ = "0.1.0"

_EXPORTS = {
    "ScorerSettings": "settings",
    "DiffusionScorer": "scorer",
    "ImageScores": "scorer",
    "load_backend": "checkpoints",
    "CheckpointError": "checkpoints",
    "DiffusionBackend": "backends",
    "register": "registration",
    "load_zero_shot_model": "integration.adapter",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
