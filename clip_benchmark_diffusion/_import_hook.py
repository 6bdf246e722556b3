"""A meta-path hook that calls `registration.register()` right after clip_benchmark imports.

Patching after the module body ran (instead of importing clip_benchmark eagerly) keeps
start-up free and works whichever of `clip_benchmark.cli` / `clip_benchmark.models` is
imported first.
"""
import importlib.abc
import importlib.machinery
import sys

WATCHED = ("clip_benchmark.models", "clip_benchmark.cli")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module

        def exec_then_register(module):
            original_exec(module)
            from clip_benchmark_diffusion import registration

            registration.register_module(module)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
