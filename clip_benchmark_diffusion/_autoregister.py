"""Run at interpreter start-up by `clip_benchmark_diffusion_autoregister.pth`.

Every Python process of the environment runs this, so it must cost almost nothing: it only
puts a meta-path finder in front of the import system that calls
`registration.register_module()` right after `clip_benchmark.models` or `clip_benchmark.cli`
has been imported (whichever comes first). It imports nothing at start-up, not even
`importlib.abc` (which pulls in `importlib.resources` and `tempfile`, about 10 ms): a finder
only needs a `find_spec` method. `python -m clip_benchmark_diffusion.benchmarks.startup_cost`
measures it. Set CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER=0 to switch it off.
"""
import os
import sys

WATCHED = ("clip_benchmark.models", "clip_benchmark.cli")


class _RegisterAfterImport:
    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        original_exec = spec.loader.exec_module

        def exec_then_register(module):
            original_exec(module)
            try:
                from clip_benchmark_diffusion import registration

                registration.register_module(module)
            except Exception as error:  # never let the plugin break clip_benchmark's import
                print(f"clip_benchmark_diffusion: warning: diffusion models are disabled ({error!r})",
                      file=sys.stderr)

        spec.loader.exec_module = exec_then_register
        return spec

    def invalidate_caches(self):
        pass


def install() -> None:
    if not any(type(finder).__name__ == "_RegisterAfterImport" for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


if os.environ.get("CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER", "1").strip().lower() not in ("0", "false", "no", "off"):
    try:
        install()
    except Exception as error:  # never break an unrelated Python process at start-up
        print(f"clip_benchmark_diffusion: automatic registration disabled ({error!r})", file=sys.stderr)
