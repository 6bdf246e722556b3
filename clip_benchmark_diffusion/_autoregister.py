"""Run at interpreter start-up by `clip_benchmark_diffusion_autoregister.pth`.

It must stay cheap (every Python process imports it): it only installs an import hook that
registers the diffusion backend the moment `clip_benchmark.models` or `clip_benchmark.cli` is
imported. Set CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER=0 to switch it off.
"""
import os

if os.environ.get("CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER", "1").strip().lower() not in ("0", "false", "no", "off"):
    try:
        from clip_benchmark_diffusion._import_hook import install

        install()
    except Exception as error:  # never break an unrelated Python process at start-up
        import sys

        print(f"clip_benchmark_diffusion: automatic registration disabled ({error!r})", file=sys.stderr)
