"""Li et al.'s own adaptive classifier, `eval_prob_adaptive` from their public repository, run on this
package's model and images, so the calls-vs-accuracy table compares against their code and not only
against this package's re-implementation of their keep-lists.

    # their code, not vendored (the paper's official repository, also at github.com/diffusion-classifier/...)
    git clone https://github.com/alexlioralexli/diffusion-classifier /path/to/li
    python -m clip_benchmark_diffusion.benchmarks.li_adaptive --li_repo /path/to/li --pretrained ref-world \\
        --root data/world_c/colour_shape --sets gaussian_noise/5 --images 24 \\
        --to_keep 20 10 5 1 --n_samples 10 26 51 256 --out results/li_row.json

Their function gets what their own `main()` would give it, built from our backend: the UNet, an
`EulerDiscreteScheduler` made from the checkpoint's scheduler config (their `get_sd_model` loads that
class from the checkpoint's scheduler folder), the VAE posterior mean times the latent scaling, and
text embeddings made as their `main()` makes them (tokenizer padded to its maximum length, the text
encoder's last hidden state). The images and prompts are those of `calls_vs_accuracy` (the first
template of each class: their CSVs hold one prompt per class). Two things differ from their script,
both to make the row reproducible and comparable: each image's noise is seeded (`--seed`, image
index) and passed in as their `all_noise` argument (their default is an unseeded `torch.randn`), and
the dtype is float32 on the CPU. Their module imports `pandas` and, through `diffusion.datasets`,
`imagenetv2_pytorch`, which only their `main()` and dataset loaders use; when either is not
installed an empty placeholder module stands in for it (nothing of it is called). Their modules read
files relative to the repository root when imported, so the import runs from there.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np
import torch

#: modules their `eval_prob_adaptive.py` imports but the function never uses
UNUSED_IMPORTS = ("pandas", "imagenetv2_pytorch")
#: files that identify a checkout of their repository
LI_FILES = ("eval_prob_adaptive.py", os.path.join("diffusion", "models.py"), os.path.join("diffusion", "datasets.py"))


def import_li(repo: str) -> types.ModuleType:
    """Their `eval_prob_adaptive` module from the checkout at `repo` (added to sys.path)."""
    missing = [name for name in LI_FILES if not os.path.isfile(os.path.join(repo, name))]
    if missing:
        raise SystemExit(f"--li_repo {repo} is not a checkout of Li et al.'s diffusion-classifier "
                         f"(github.com/alexlioralexli/diffusion-classifier): no {', '.join(missing)}")
    placeholders = []
    for name in UNUSED_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            placeholder = types.ModuleType(name)
            # the one name `diffusion.datasets` imports from imagenetv2_pytorch (it subclasses it)
            placeholder.ImageNetV2Dataset = type("ImageNetV2Dataset", (), {})
            sys.modules[name] = placeholder
            placeholders.append(name)
    repo = os.path.abspath(repo)
    cached = sys.modules.get("eval_prob_adaptive")
    if cached is not None and not os.path.abspath(cached.__file__).startswith(repo + os.sep):
        del sys.modules["eval_prob_adaptive"]  # another checkout's, imported earlier in this process
    if repo not in sys.path:
        sys.path.insert(0, repo)
    here = os.getcwd()
    os.chdir(repo)  # their modules open files by paths relative to the repository root at import
    try:
        module = importlib.import_module("eval_prob_adaptive")
    finally:
        os.chdir(here)
        # their modules keep their references; the rest of the process must not see an empty
        # `pandas` (libraries such as scikit-learn test `sys.modules["pandas"].DataFrame`)
        for name in placeholders:
            sys.modules.pop(name, None)
    if not os.path.abspath(module.__file__).startswith(repo + os.sep):
        raise SystemExit(f"eval_prob_adaptive was imported from {module.__file__}, not from --li_repo {repo}")
    return module


def li_inputs(backend, pixels: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(latents, text embeddings, scheduler) for their function, from our backend: the inputs their
    `main()` builds from a Stable Diffusion checkpoint."""
    from diffusers import EulerDiscreteScheduler

    latents = backend.encode_images(pixels)
    with torch.inference_mode():
        text_embeds = backend.encode_prompts(list(prompts)).states.to(backend.device)
    return latents, text_embeds, EulerDiscreteScheduler.from_config(backend.pipe.scheduler.config)


def li_args(to_keep: Sequence[int], n_samples: Sequence[int], batch_size: int, loss: str = "l2",
            dtype: str = "float32") -> argparse.Namespace:
    """The namespace their function reads. `version` only selects the hard-coded SD scheduler config
    their `get_scheduler_config` returns, of which the function reads num_train_timesteps (1000)."""
    if len(to_keep) != len(n_samples) or list(to_keep)[-1] != 1:
        raise SystemExit(f"--to_keep {list(to_keep)} and --n_samples {list(n_samples)} need equal lengths and a last "
                         "stage that keeps 1 class (their function asserts it)")
    return argparse.Namespace(to_keep=list(to_keep), n_samples=list(n_samples), n_trials=1, batch_size=batch_size,
                              loss=loss, dtype=dtype, version="2-0")


def seeded_noise(seed: int, index: int, count: int, latent: torch.Tensor) -> torch.Tensor:
    """Image `index`'s noise table (their `all_noise`: one noise per timestep), from a seeded generator."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn((count, *latent.shape[1:]), generator=generator).to(latent.device, latent.dtype)


def run(module: types.ModuleType, backend, pixels: torch.Tensor, labels: torch.Tensor,
        candidates: Sequence[Sequence[str]], args: argparse.Namespace, seed: int = 0
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image correctness, UNet calls and seconds of their function on our images."""
    if backend.noise_process.num_train_timesteps != 1000:
        raise SystemExit(f"their eval_prob_adaptive assumes 1000 training timesteps; this model has "
                         f"{backend.noise_process.num_train_timesteps}")
    module.device = str(backend.device)  # their module picks cuda/cpu at import; use the backend's device
    latents, text_embeds, scheduler = li_inputs(backend, pixels, [prompts[0] for prompts in candidates])
    backend.start_scoring()  # the UNet joins the device
    correct, calls, seconds = [], [], []
    for i, latent in enumerate(latents):
        latent = latent.unsqueeze(0)
        noise = seeded_noise(seed, i, max(args.n_samples) * args.n_trials, latent)
        started = time.perf_counter()
        prediction, data = module.eval_prob_adaptive(backend.denoiser, latent, text_embeds, scheduler, args,
                                                     latent_size=latent.shape[-1], all_noise=noise)
        seconds.append(time.perf_counter() - started)
        calls.append(sum(len(entry["pred_errors"]) for entry in data.values()))
        correct.append(prediction == int(labels[i]))
    return np.array(correct), np.array(calls), np.array(seconds)


def run_ours(backend, pixels: torch.Tensor, labels: torch.Tensor, candidates: Sequence[Sequence[str]],
             args: argparse.Namespace, seed: int = 0, image_batch: int = 8) -> tuple[np.ndarray, np.ndarray, float]:
    """The same keep-list through this package's scorer (`--diffusion_schedule`), timed the same way:
    per-image correctness, calls, and seconds per image (images are scored `image_batch` at a time)."""
    from ..scorer import DiffusionScorer
    from ..settings import ScorerSettings

    settings = ScorerSettings(strategy="schedule", schedule_keep=tuple(args.to_keep),
                              schedule_draws=tuple(args.n_samples), templates="average_errors",
                              batch_size=args.batch_size, seed=seed)
    scorer = DiffusionScorer(backend, settings)
    started = time.perf_counter()
    results = []
    for start in range(0, len(pixels), image_batch):
        results += scorer.score(pixels[start:start + image_batch], [list(c[:1]) for c in candidates])
    seconds = (time.perf_counter() - started) / len(pixels)
    correct = np.array([r.prediction == int(y) for r, y in zip(results, labels)])
    return correct, np.array([r.calls for r in results]), seconds


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from ..checkpoints import load_backend
    from . import calls_vs_accuracy as bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--li_repo", required=True, help="a checkout of github.com/alexlioralexli/diffusion-classifier")
    parser.add_argument("--pretrained", default="ref-world")
    parser.add_argument("--task", default="colour_shape", help="a reference-world task (without --root)")
    parser.add_argument("--root", default=None, help="a corruption root, as calls_vs_accuracy's --root")
    parser.add_argument("--sets", nargs="+", default=None, metavar="CORRUPTION/SEVERITY")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--data_seed", type=int, default=1, help="seed of the reference world's test images")
    parser.add_argument("--to_keep", type=int, nargs="+", required=True)
    parser.add_argument("--n_samples", type=int, nargs="+", required=True)
    parser.add_argument("--loss", default="l2", choices=("l1", "l2", "huber"))
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ours", action="store_true",
                        help="also run the same keep-list through this package's scorer, timed the same way")
    parser.add_argument("--out", default=None, help="append the rows (calls_vs_accuracy's Row fields) to this JSON")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    module = import_li(options.li_repo)
    args = li_args(options.to_keep, options.n_samples, options.batch_size, options.loss)
    backend = load_backend(options.pretrained, device=options.device)
    corrupted = bench.corruption_tasks(options.root, options.sets) if options.root else {}
    label = (f"Li et al.'s eval_prob_adaptive {','.join(map(str, args.to_keep))} @ "
             f"{','.join(map(str, args.n_samples))} (their code)")
    rows = []
    for task in list(corrupted) or [options.task]:
        if task in corrupted:
            pixels, labels, candidates = bench.set_data(corrupted[task], options.images, backend.image_transform())
        else:
            pixels, labels, candidates = bench.task_data(task, options.images, options.data_seed,
                                                         backend.image_transform())
        correct, calls, seconds = run(module, backend, pixels, labels, candidates, args, options.seed)
        nan = float("nan")
        rows.append(bench.Row(task, label, "Li", 0, float(correct.mean()), float(calls.mean()), nan, nan, nan,
                              float(seconds.mean())))
        if options.ours:
            ours, our_calls, our_seconds = run_ours(backend, pixels, labels, candidates, args, options.seed)
            name = (f"schedule {','.join(f'{k}@{n}' for k, n in zip(args.to_keep, args.n_samples))} "
                    "(this package, timed alongside)")
            rows.append(bench.Row(task, name, "Li", 0, float(ours.mean()), float(our_calls.mean()), nan, nan, nan,
                                  our_seconds))
        for row in rows[-2 if options.ours else -1:]:
            print(f"| {task} | {row.name} | {row.accuracy:.1%} | {row.calls_per_image:.0f} | "
                  f"{row.seconds_per_image:.2f} s / image ({len(correct)} images, {torch.get_num_threads()} "
                  f"thread(s), {options.device}) |", flush=True)
    if options.out:
        previous = json.load(open(options.out)) if os.path.exists(options.out) else []
        with open(options.out, "w") as handle:
            json.dump(previous + [asdict(row) for row in rows], handle, indent=1)
    return {"rows": rows}


if __name__ == "__main__":
    main()
