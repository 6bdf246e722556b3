"""Teach the unmodified clip_benchmark CLI about diffusion models.

What `register()` changes, all in memory (clip_benchmark's files are never touched):

* `clip_benchmark.models`: a `diffusion` model type, and the `open_clip` loader answers
  the diffusion model names (`sd-diffusion`) itself, so `--model sd-diffusion` works under
  the default model type while every other open_clip model loads exactly as before;
  the reference-world CLIP config is registered with open_clip.
* `clip_benchmark.cli`: `--diffusion_*` flags are taken off the command line before
  clip_benchmark parses it; each diffusion run is checked before any compute (task,
  `--load_clfs`, checkpoint), gets an output name without `/`, and writes its per-image
  record beside the result JSON.
* `clip_benchmark.metrics.zeroshot_classification.run_classification`: after a diffusion
  run, the true labels are added to the record.

It runs automatically through a `.pth` import hook (see `_autoregister.py`; switch off with
CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER=0), or explicitly via `python -m clip_benchmark_diffusion`.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from typing import Any, Iterator, Optional

from .checkpoints import CheckpointError
from .settings import (COMPILE_MODES, DTYPES, LOSSES, OBJECTIVES, STRATEGIES, TEMPLATE_MODES, TIMESTEP_SAMPLERS,
                       TTEST_VARIANCES, ScorerSettings)

DIFFUSION_MODEL_NAMES = ("sd-diffusion",)
MODEL_TYPE = "diffusion"
SUPPORTED_TASKS = ("zeroshot_classification", "image_caption_selection")
_MARK = "_clip_benchmark_diffusion_patched"


class DiffusionUsageError(RuntimeError):
    """A clip_benchmark option combination a diffusion model cannot serve."""


# --------------------------------------------------------------------------- command line
def diffusion_argument_parser() -> argparse.ArgumentParser:
    """The `--diffusion_*` flags (added to clip_benchmark's `eval`)."""
    defaults = ScorerSettings()
    parser = argparse.ArgumentParser(add_help=False, prog="clip_benchmark eval",
                                     description="diffusion classifier options (clip-benchmark-diffusion)")
    group = parser.add_argument_group("diffusion classifier (clip-benchmark-diffusion)")
    add = group.add_argument
    add("--diffusion_draws", type=int, default=defaults.draws,
        help="(t, noise) draws per candidate (maximum with --diffusion_strategy ttest)")
    add("--diffusion_strategy", choices=STRATEGIES, default=defaults.strategy,
        help="fixed budget, paired t-test elimination, or multi-stage schedule")
    add("--diffusion_timesteps", choices=TIMESTEP_SAMPLERS, default=defaults.timesteps, help="timestep sampling")
    add("--diffusion_t_range", type=int, nargs=2, metavar=("T_MIN", "T_MAX"), default=None,
        help="restrict timesteps to [T_MIN, T_MAX]")
    add("--diffusion_objective", choices=OBJECTIVES, default=defaults.objective, help="error space and weighting")
    add("--diffusion_bucket_weights", type=float, nargs="+", default=None,
        help="per-bucket weights for --diffusion_objective x0_buckets (equal-width timestep buckets)")
    add("--diffusion_bucket_weights_file", type=str, default=None, metavar="FILE",
        help="read the x0_buckets weights from FILE (`python -m clip_benchmark_diffusion.weighting fit` output)")
    add("--diffusion_heuristic_rate", type=float, default=defaults.heuristic_rate,
        help="k in the x0_heuristic weight exp(-k t)")
    add("--diffusion_loss", choices=LOSSES, default=defaults.loss)
    add("--diffusion_templates", choices=TEMPLATE_MODES, default=defaults.templates,
        help="average errors over templates (cost x templates) or condition on the mean text embedding")
    add("--diffusion_batch_size", type=int, default=defaults.batch_size, help="UNet rows per call")
    add("--diffusion_dtype", choices=DTYPES, default=defaults.dtype, help="auto: float16 on CUDA, float32 on CPU")
    add("--diffusion_channels_last", action="store_true", help="channels_last memory format for the denoiser")
    add("--diffusion_compile", choices=COMPILE_MODES, default=defaults.compile,
        help="torch.compile the denoiser in this mode (reduce-overhead: CUDA graphs); passes are padded to the "
             "next power of two rows")
    add("--diffusion_ttest_p", type=float, default=defaults.ttest_p)
    add("--diffusion_min_draws", type=int, default=defaults.min_draws)
    add("--diffusion_round_draws", type=int, default=defaults.round_draws)
    add("--diffusion_ttest_variance", choices=TTEST_VARIANCES, default=defaults.ttest_variance,
        help="t-test variance: per candidate pair (paired) or pooled over the open candidates (pooled)")
    add("--diffusion_schedule", type=str, default=None, metavar="KEEP@DRAWS,...",
        help="multi-stage schedule, e.g. 5@50,1@500 (keep 5 after 50 draws, 1 after 500)")
    add("--diffusion_max_candidates", type=int, default=defaults.max_candidates)
    add("--diffusion_prefilter", type=str, default=None, metavar="MODEL,PRETRAINED",
        help="open_clip model that keeps only its top --diffusion_prefilter_k classes per image")
    add("--diffusion_prefilter_k", type=int, default=5)
    add("--diffusion_records", type=str, default=None,
        help="per-image record file (default: beside the result JSON, suffix .diffusion.jsonl)")
    add("--diffusion_no_progress", action="store_true", help="no progress bar")
    return parser


def settings_from_options(options: argparse.Namespace, seed: int) -> ScorerSettings:
    """Build the scorer settings of a run from its parsed flags (seed = clip_benchmark's --seed)."""
    values: dict[str, Any] = dict(
        draws=options.diffusion_draws, strategy=options.diffusion_strategy, timesteps=options.diffusion_timesteps,
        objective=options.diffusion_objective, heuristic_rate=options.diffusion_heuristic_rate,
        loss=options.diffusion_loss, templates=options.diffusion_templates, batch_size=options.diffusion_batch_size,
        dtype=options.diffusion_dtype, channels_last=options.diffusion_channels_last,
        compile=options.diffusion_compile, ttest_p=options.diffusion_ttest_p, min_draws=options.diffusion_min_draws,
        round_draws=options.diffusion_round_draws, ttest_variance=options.diffusion_ttest_variance,
        max_candidates=options.diffusion_max_candidates, seed=seed)
    if options.diffusion_t_range:
        values["t_min"], values["t_max"] = options.diffusion_t_range
    if options.diffusion_bucket_weights:
        values["bucket_weights"] = tuple(options.diffusion_bucket_weights)
    if getattr(options, "diffusion_bucket_weights_file", None):
        from .weighting import read_bucket_weights

        try:
            values["bucket_weights"] = read_bucket_weights(options.diffusion_bucket_weights_file)
        except (OSError, ValueError) as error:
            raise DiffusionUsageError(f"--diffusion_bucket_weights_file: {error}") from None
    if options.diffusion_prefilter:
        model, _, pretrained = options.diffusion_prefilter.partition(",")
        values.update(prefilter_model=model, prefilter_pretrained=pretrained, prefilter_k=options.diffusion_prefilter_k)
    if options.diffusion_schedule:
        keep, draws = parse_schedule(options.diffusion_schedule)
        values.update(schedule_keep=keep, schedule_draws=draws)
    try:
        return ScorerSettings(**values)
    except ValueError as error:
        raise DiffusionUsageError(str(error)) from None


def parse_schedule(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'5@50,1@500' -> ((5, 1), (50, 500))."""
    try:
        stages = [tuple(int(v) for v in stage.split("@")) for stage in text.split(",")]
        keep, draws = zip(*stages)
    except ValueError:
        raise DiffusionUsageError(f"--diffusion_schedule {text!r}: expected KEEP@DRAWS,... e.g. 5@50,1@500") from None
    return tuple(keep), tuple(draws)


_state: dict[str, Any] = {"options": None, "run": None}


# --------------------------------------------------------------------------- loading
def is_diffusion_model(model_type: str, model_name: str) -> bool:
    return model_type == MODEL_TYPE or model_name in DIFFUSION_MODEL_NAMES


def load_diffusion(model_name: str, pretrained: str, cache_dir: Optional[str] = None, device: Any = "cpu"):
    """clip_benchmark loader for diffusion models: `(model, transform, tokenizer)`."""
    from .clip_benchmark_adapter import load_zero_shot_model

    run = _state["run"] or {}
    options = _state["options"] or diffusion_argument_parser().parse_args([])
    settings = run.get("settings") or settings_from_options(options, seed=0)
    task = (run.get("info") or {}).get("task", "zeroshot_classification")
    return load_zero_shot_model(pretrained, device, settings, record_path=run.get("record_path"),
                                run_info=run.get("info"), cache_dir=cache_dir,
                                show_progress=not options.diffusion_no_progress, task=task)


def _patch_models(models_module) -> None:
    if getattr(models_module, _MARK, False):
        return
    open_clip_loader = models_module.TYPE2FUNC["open_clip"]

    @functools.wraps(open_clip_loader)
    def open_clip_or_diffusion(model_name: str = "ViT-B-32-quickgelu", pretrained: str = "laion400m_e32",
                               cache_dir: Optional[str] = None, device: Any = "cpu"):
        if model_name in DIFFUSION_MODEL_NAMES:
            return load_diffusion(model_name, pretrained, cache_dir=cache_dir, device=device)
        return open_clip_loader(model_name=model_name, pretrained=pretrained, cache_dir=cache_dir, device=device)

    models_module.TYPE2FUNC["open_clip"] = open_clip_or_diffusion
    models_module.TYPE2FUNC[MODEL_TYPE] = load_diffusion
    if MODEL_TYPE not in models_module.MODEL_TYPES:
        models_module.MODEL_TYPES.append(MODEL_TYPE)  # the same list object the CLI's --model_type choices use
    _register_reference_clip()
    setattr(models_module, _MARK, True)


def _register_reference_clip() -> None:
    try:
        from .reference import register_reference_clip
    except ImportError:
        return
    register_reference_clip()


@contextlib.contextmanager
def diffusion_run(options: Optional[argparse.Namespace], seed: int, record_path: Optional[str],
                  info: dict) -> Iterator[Any]:
    """Within this block, diffusion models loaded through clip_benchmark's `load_clip` use the
    settings of `options` (parsed `--diffusion_*` flags; None = defaults) and `seed`, write their
    per-image record to `record_path`, and serve `info["task"]`. Yields the settings."""
    options = options or diffusion_argument_parser().parse_args([])
    settings = settings_from_options(options, seed=seed)
    saved = dict(_state)
    _state["options"] = options
    _state["run"] = {"settings": settings, "record_path": record_path, "info": info}
    try:
        yield settings
    finally:
        _state.update(saved)


def file_safe_pretrained(pretrained: str) -> str:
    """`--pretrained` as clip_benchmark puts it into output names, but never with a `/`
    (clip_benchmark only slugs names of existing files and crashes at the very end)."""
    slug = os.path.basename(pretrained) if os.path.isfile(pretrained) else pretrained
    return slug.strip("/").replace("/", "_")


# --------------------------------------------------------------------------- the CLI
def _dataset_name(args: argparse.Namespace) -> str:
    """The dataset name as clip_benchmark uses it for tasks and output names (no `wds/`)."""
    return args.dataset.replace("wds/", "", 1) if args.dataset.startswith("wds/") else args.dataset


def _output_path(args: argparse.Namespace, task: str) -> str:
    """clip_benchmark's own output name, with a file-safe `{pretrained}`."""
    dataset_name = _dataset_name(args)
    slug = file_safe_pretrained(args.pretrained)
    return args.output.format(model=args.model, pretrained=slug, pretrained_full_path=slug,
                              task=task, dataset=dataset_name.replace("/", "_"), language=args.language)


def _check_diffusion_run(args: argparse.Namespace) -> str:
    """Everything that would fail late, checked before any compute. Returns the task."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    from .checkpoints import locate

    dataset_name = _dataset_name(args)
    task = get_dataset_default_task(dataset_name) if args.task == "auto" else args.task
    if task not in SUPPORTED_TASKS:
        raise DiffusionUsageError(f"task '{task}' is not supported for diffusion models (model '{args.model}'); "
                                  f"supported: {', '.join(SUPPORTED_TASKS)}")
    if args.load_clfs:
        raise DiffusionUsageError("--load_clfs cannot be used with diffusion models: their class scores are not a "
                                  "fixed linear classifier; drop --load_clfs")
    locate(args.pretrained, cache_dir=args.model_cache_dir)
    return task


def _predictions_path(args: argparse.Namespace) -> Optional[str]:
    """`X.predictions.jsonl` beside a classification run's result `X.json` (any model): the report's
    confidence intervals and paired tests need per-image correctness, which the result JSON lacks."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    task = get_dataset_default_task(_dataset_name(args)) if args.task == "auto" else args.task
    return os.path.abspath(os.path.splitext(_output_path(args, task))[0] + ".predictions.jsonl") \
        if task == "zeroshot_classification" else None


def _patch_cli(cli_module) -> None:
    if getattr(cli_module, _MARK, False):
        return
    original_parse = cli_module.get_parser_args
    original_run = cli_module.run

    def get_parser_args():
        options, rest = diffusion_argument_parser().parse_known_args(sys.argv[1:])
        _state["options"] = options
        saved = sys.argv
        sys.argv = [saved[0]] + rest
        try:
            return original_parse()
        except SystemExit:
            if any(flag in rest for flag in ("-h", "--help")) and rest and rest[0] == "eval":
                print()
                diffusion_argument_parser().print_help()
            raise
        finally:
            sys.argv = saved

    def run(args):
        _state["predictions"] = _predictions_path(args)
        try:
            return run_model(args)
        finally:
            _state["predictions"] = None  # never written by a later, unrelated run_classification call

    def run_model(args):
        if not is_diffusion_model(args.model_type, args.model):
            _state["run"] = None
            return original_run(args)
        try:
            task = _check_diffusion_run(args)
            output = _output_path(args, task)
            options = _state["options"]
            record_path = (options and options.diffusion_records) or (os.path.splitext(output)[0] + ".diffusion.jsonl")
            info = {"dataset": args.dataset, "pretrained": args.pretrained, "task": task, "result_json": output,
                    "model_name": args.model, "language": args.language}
            with diffusion_run(options, args.seed, record_path, info):
                args.output = output.replace("{", "{{").replace("}", "}}")
                return original_run(args)
        except (CheckpointError, DiffusionUsageError) as error:
            print(f"clip_benchmark_diffusion: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    cli_module.get_parser_args = get_parser_args
    cli_module.run = run
    _patch_zeroshot_metric()
    _patch_caption_selection_metric()
    setattr(cli_module, _MARK, True)


def _patch_zeroshot_metric() -> None:
    from clip_benchmark.metrics import zeroshot_classification

    if getattr(zeroshot_classification, _MARK, False):
        return
    original = zeroshot_classification.run_classification

    def run_classification(model, classifier, dataloader, device, amp=True):
        finish = getattr(model, "finish", None)
        if finish is not None:
            try:
                model.expected_images = len(dataloader.dataset)
            except TypeError:
                pass  # iterable (webdataset) datasets have no length
        logits, target = original(model, classifier, dataloader, device, amp=amp)
        if _state.get("predictions") and target.dim() == 1:
            path = _state.pop("predictions")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(f'{{"index": {i}, "prediction": {p}, "label": {t}}}\n'
                                  for i, (p, t) in enumerate(zip(logits.argmax(dim=1).tolist(), target.tolist())))
        if finish is not None:
            finish(labels=target.tolist() if target.dim() == 1 else None)
        return logits, target

    zeroshot_classification.run_classification = run_classification
    setattr(zeroshot_classification, _MARK, True)


class _LayoutReportingLoader:
    """Iterates a caption-selection dataloader unchanged, telling the model each batch's
    (images, captions) per instance before clip_benchmark encodes it."""

    def __init__(self, dataloader, model) -> None:
        self.dataloader, self.model = dataloader, model
        self.instances, self.images_per_instance = 0, 0  # for the report's intervals (any model)

    def __iter__(self):
        for batch_images, batch_texts in self.dataloader:
            images_per = 1 if batch_images.dim() == 4 else batch_images.shape[1]
            self.instances += len(batch_texts)
            self.images_per_instance = max(self.images_per_instance, images_per)
            if hasattr(self.model, "caption_layout"):
                self.model.caption_layout = (images_per, len(batch_texts[0]))
            yield batch_images, batch_texts

    def __len__(self) -> int:
        return len(self.dataloader)


def _patch_caption_selection_metric() -> None:
    from clip_benchmark.metrics import image_caption_selection

    if getattr(image_caption_selection, _MARK, False):
        return
    original = image_caption_selection.evaluate

    def evaluate(model, dataloader, tokenizer, device, amp=True):
        loader = _LayoutReportingLoader(dataloader, model)
        metrics = original(model, loader, tokenizer, device, amp=amp)
        if getattr(model, "task", None) == "image_caption_selection":
            model.finish()
        # with one image per instance, image_acc is 1 by construction: the report says so instead of 100%
        return {**metrics, "instances": loader.instances, "images_per_instance": loader.images_per_instance}

    image_caption_selection.evaluate = evaluate
    setattr(image_caption_selection, _MARK, True)


# --------------------------------------------------------------------------- entry points
def register_module(module) -> None:
    """Patch one freshly imported clip_benchmark module (called by the import hook)."""
    if module.__name__ == "clip_benchmark.models":
        _patch_models(module)
    elif module.__name__ == "clip_benchmark.cli":
        _patch_cli(module)


def register() -> None:
    """Register explicitly (idempotent): for `python -m clip_benchmark_diffusion` and Python use."""
    import clip_benchmark.cli
    import clip_benchmark.models

    _patch_models(clip_benchmark.models)
    _patch_cli(clip_benchmark.cli)
