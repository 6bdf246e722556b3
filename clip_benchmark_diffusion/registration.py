"""Teach the unmodified clip_benchmark CLI about diffusion models.

What `register()` changes, all in memory (clip_benchmark's files are never touched):

* `clip_benchmark.models`: a `diffusion` entry in its model-type registry (`TYPE2FUNC`,
  `MODEL_TYPES`: clip_benchmark's one extension point); the reference-world CLIP is
  registered with open_clip.
* `clip_benchmark.cli`: `--diffusion_*` flags are taken off the command line before
  clip_benchmark parses it; a diffusion run (`--model_type diffusion`, or `--model sd-diffusion`
  under any model type) is checked before any compute (task, `--load_clfs`, checkpoint),
  gets an output name without `/`, and writes its per-image record beside the result JSON.
* `run_classification` / `image_caption_selection.evaluate`: for diffusion models only, the
  true labels are added to the record (and caption batches report their layout).

Every wrapper takes `*args, **kwargs` and passes other models' calls through untouched. If
anything expected is missing (clip_benchmark changed), every patch is undone and one warning
says what changed: clip_benchmark keeps working, without diffusion models.

It runs automatically through a `.pth` import hook (see `_autoregister.py`; switch off with
CLIP_BENCHMARK_DIFFUSION_AUTOREGISTER=0), or explicitly via `python -m clip_benchmark_diffusion`.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import inspect
import os
import sys
import time
from typing import Any, Iterator, Optional

from .console import (INTERRUPTED_EXIT_CODE, abbreviated_flag_error, group_help, interrupted_line, model_suggestion,
                      quiet_third_party_output, summary_line, with_defaults)
from .errors import (CheckpointError, DatasetError, DiffusionClassifierError, DiffusionUsageError,  # noqa: F401
                     HostChanged, NonFiniteError, RecordError, ResourceLimit, ShardError, UnsupportedSettings,
                     error_line, say, warn)
from .prompts import canonical_templates
from .protocols import DEFAULT_PROTOCOL, check_protocol, protocol_names
from .records import close_recorders, record_lock
from .safety import output_problem
from .integration.ranks import rank_record_path
from .settings import (COMPILE_MODES, DTYPES, LOSSES, OBJECTIVES, SIGMA_DISTRIBUTIONS, STRATEGIES, TEMPLATE_MODES,
                       TIMESTEP_SAMPLERS, TTEST_VARIANCES, ScorerSettings)

DIFFUSION_MODEL_NAMES = ("sd-diffusion",)
MODEL_TYPE = "diffusion"
SUPPORTED_TASKS = ("zeroshot_classification", "image_caption_selection")


# --------------------------------------------------------------------------- command line
def diffusion_argument_parser() -> argparse.ArgumentParser:
    """The `--diffusion_*` flags (added to clip_benchmark's `eval`)."""
    defaults = ScorerSettings()
    # allow_abbrev=False: `--diffusion_draw 8` is refused with the full name, not taken as --diffusion_draws
    parser = argparse.ArgumentParser(add_help=False, prog="clip_benchmark eval", allow_abbrev=False)
    group = parser.add_argument_group("diffusion classifier (clip-benchmark-diffusion; used by --model sd-diffusion)")
    add = group.add_argument
    add("--diffusion_protocol", type=str, default=DEFAULT_PROTOCOL, metavar="NAME",
        help=f"a paper's whole protocol, set per dataset ({', '.join(protocol_names())}; see docs/protocols.md); "
             "explicit --diffusion_* flags override it and the record says so")
    add("--diffusion_draws", type=int, default=defaults.draws,
        help="(t, noise) draws per candidate: the full budget (the maximum of the adaptive strategies)")
    add("--diffusion_strategy", choices=STRATEGIES, default=None,
        help=f"guaranteed elimination (the full budget's answer with probability >= 1 - delta), fixed budget, "
             f"t-test elimination, or multi-stage schedule (default: {defaults.strategy}, "
             "or schedule when --diffusion_schedule is given)")
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
    add("--diffusion_loss", choices=LOSSES, default=defaults.loss,
        help="per-element loss averaged over the latent")
    add("--diffusion_sigma_distribution", choices=SIGMA_DISTRIBUTIONS, default=defaults.sigma_distribution,
        help="flow-matching models: sigma from the model's own shift, uniform, or logit-normal")
    add("--diffusion_logit_normal", type=float, nargs=2, metavar=("MEAN", "STD"), default=None,
        help="mean and std of --diffusion_sigma_distribution logit_normal (default 0 1)")
    add("--diffusion_no_t5", action="store_true", help="SD3/SD3.5: run without the T5 text encoder (~9 GB less)")
    add("--diffusion_guidance", type=float, default=defaults.guidance,
        help="FLUX.1-dev guidance input (1.0 = plain conditional)")
    add("--diffusion_resolution", type=int, default=None, help="score at this pixel size (default: the model's)")
    add("--diffusion_templates", choices=TEMPLATE_MODES, default=defaults.templates,
        help="single: one prompt per class, the dataset's canonical one (the papers' protocol); average_errors: "
             "every template, errors averaged (cost x templates); average_embeddings: the mean text state of the "
             "templates (untested on real models)")
    add("--diffusion_batch_size", type=int, default=defaults.batch_size, help="UNet rows per call")
    add("--diffusion_dtype", choices=DTYPES, default=defaults.dtype, help="auto: on CUDA float16 (UNet families) or bfloat16 (flow/T5 families); float32 on CPU")
    add("--diffusion_channels_last", action="store_true", help="channels_last memory format for the denoiser")
    add("--diffusion_compile", choices=COMPILE_MODES, default=defaults.compile,
        help="torch.compile the denoiser in this mode (reduce-overhead: CUDA graphs); passes are padded to the "
             "next power of two rows")
    add("--diffusion_delta", type=float, default=defaults.delta,
        help="guaranteed: the answer equals the full budget's (--diffusion_draws for every candidate) with "
             "probability >= 1 - DELTA")
    add("--diffusion_look_growth", type=float, default=defaults.look_growth,
        help="guaranteed: each test after the first at this many times the previous draw count")
    add("--diffusion_ttest_p", type=float, default=defaults.ttest_p, help="ttest: drop at p below this")
    add("--diffusion_min_draws", type=int, default=defaults.min_draws,
        help="guaranteed, ttest: draws of every candidate before the first test")
    add("--diffusion_round_draws", type=int, default=defaults.round_draws, help="ttest: draws added per round")
    add("--diffusion_ttest_variance", choices=TTEST_VARIANCES, default=defaults.ttest_variance,
        help="t-test variance: per candidate pair (paired) or pooled over the open candidates (pooled)")
    add("--diffusion_schedule", type=str, default=None, metavar="KEEP@DRAWS,...",
        help="multi-stage schedule, e.g. 5@50,1@500 (keep 5 after 50 draws, 1 after 500)")
    add("--diffusion_max_candidates", type=int, default=defaults.max_candidates,
        help="most classes (or captions) one run can register; raise it for datasets with more classes")
    add("--diffusion_max_calls", type=int, default=defaults.max_calls, metavar="N",
        help="at most N UNet calls per image (0: no cap); adaptive strategies decide at the cap and the record "
             "marks such images \"capped\"")
    add("--diffusion_prefilter", type=str, default=None, metavar="MODEL,PRETRAINED",
        help="open_clip model that keeps only its top --diffusion_prefilter_k classes per image")
    add("--diffusion_prefilter_k", type=int, default=5, help="classes --diffusion_prefilter keeps per image")
    add("--diffusion_records", type=str, default=None,
        help="per-image record file (default: beside the result JSON, suffix .diffusion.jsonl)")
    add("--diffusion_no_progress", action="store_true", help="no progress bar")
    add("--diffusion_limit", type=int, default=0, metavar="N",
        help="quick look: score only the first N images and print the summary line (no result JSON is written; "
             "the record keeps the images, so the full run reuses them); 0 = all images")
    add("--diffusion_predictions", action="store_true",
        help="for any model, CLIP included: write X.predictions.jsonl beside a classification result and add "
             "instances / images_per_instance to caption-selection metrics (the report's intervals and paired tests "
             "use them); classification runs of any model and diffusion runs always do")
    return with_defaults(parser)


def settings_from_options(options: argparse.Namespace, seed: int) -> ScorerSettings:
    """Build the scorer settings of a run from its parsed flags (seed = clip_benchmark's --seed)."""
    try:
        return ScorerSettings(**_values_from_options(options, seed))
    except ValueError as error:
        raise DiffusionUsageError(str(error)) from None


def explicit_flags(argv: list[str]) -> frozenset[str]:
    """The `--diffusion_*` options (argparse dests) given on a command line, whatever their value."""
    parser = diffusion_argument_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return frozenset(vars(parser.parse_known_args(argv)[0]))


def settings_for_dataset(options: Optional[argparse.Namespace], seed: int, dataset: str
                         ) -> tuple[ScorerSettings, dict]:
    """The settings of one dataset's run under `--diffusion_protocol` (resolved per dataset: one
    command runs a suite), and the protocol's record (name, implied settings, overrides)."""
    from .protocols import resolve

    options = options or diffusion_argument_parser().parse_args([])
    explicit = getattr(options, "diffusion_explicit", None)
    if explicit is None:  # built in Python: what differs from the flag defaults counts as given
        defaults = vars(diffusion_argument_parser().parse_args([]))
        explicit = {k for k, v in vars(options).items() if k in defaults and v != defaults[k]}
    try:
        name = check_protocol(getattr(options, "diffusion_protocol", None) or DEFAULT_PROTOCOL)
        return resolve(name, dataset, _values_from_options(options, seed), explicit)
    except ValueError as error:  # ProtocolError, or invalid merged settings
        raise DiffusionUsageError(str(error)) from None


def _values_from_options(options: argparse.Namespace, seed: int) -> dict[str, Any]:
    """ScorerSettings fields from parsed flags (their defaults included)."""
    values: dict[str, Any] = dict(
        draws=options.diffusion_draws, strategy=options.diffusion_strategy, timesteps=options.diffusion_timesteps,
        objective=options.diffusion_objective, heuristic_rate=options.diffusion_heuristic_rate,
        loss=options.diffusion_loss, templates=options.diffusion_templates, batch_size=options.diffusion_batch_size,
        dtype=options.diffusion_dtype, channels_last=options.diffusion_channels_last,
        compile=options.diffusion_compile, delta=options.diffusion_delta, look_growth=options.diffusion_look_growth,
        ttest_p=options.diffusion_ttest_p, min_draws=options.diffusion_min_draws,
        round_draws=options.diffusion_round_draws, ttest_variance=options.diffusion_ttest_variance,
        max_candidates=options.diffusion_max_candidates, max_calls=options.diffusion_max_calls, seed=seed,
        sigma_distribution=options.diffusion_sigma_distribution, drop_t5=options.diffusion_no_t5,
        guidance=options.diffusion_guidance, resolution=options.diffusion_resolution)
    if options.diffusion_logit_normal:
        values["logit_normal_mean"], values["logit_normal_std"] = options.diffusion_logit_normal
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
        if values["strategy"] not in (None, "schedule"):
            raise DiffusionUsageError(f"--diffusion_schedule is only used by --diffusion_strategy schedule, not "
                                      f"{values['strategy']}; drop one of the two")
        keep, draws = parse_schedule(options.diffusion_schedule)
        values.update(schedule_keep=keep, schedule_draws=draws, strategy="schedule")
    if values["strategy"] is None:
        del values["strategy"]
    return values


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
    from .integration.adapter import load_zero_shot_model

    run = _state["run"] or {}
    options = _state["options"] or diffusion_argument_parser().parse_args([])
    settings, protocol = (run["settings"], run.get("protocol")) if run.get("settings") else \
        settings_for_dataset(options, 0, "")
    task = (run.get("info") or {}).get("task", "zeroshot_classification")
    loaded = load_zero_shot_model(pretrained, device, settings, record_path=run.get("record_path"),
                                  run_info=run.get("info"), cache_dir=cache_dir,
                                  show_progress=not options.diffusion_no_progress, task=task, shard=run.get("shard"),
                                  protocol=protocol)
    _state["model"] = loaded[0]  # for the Ctrl-C line and the summary line
    return loaded


def _patch_models(models_module) -> None:
    """Use clip_benchmark's one real extension point: a new key in its model-type registry."""
    type_to_loader = _expect(models_module, "TYPE2FUNC", dict)
    model_types = _expect(models_module, "MODEL_TYPES", list)
    _set_item(type_to_loader, MODEL_TYPE, load_diffusion)
    if MODEL_TYPE not in model_types:
        model_types.append(MODEL_TYPE)  # the same list object the CLI's --model_type choices use
        _UNDO.append(lambda: model_types.remove(MODEL_TYPE) if MODEL_TYPE in model_types else None)
    _register_reference_clip()


def effective_model_type(model_type: str, model_name: str) -> str:
    """`--model sd-diffusion` works under clip_benchmark's default model type too."""
    return MODEL_TYPE if is_diffusion_model(model_type, model_name) else model_type


def _register_reference_clip() -> None:
    """Optional: `--model ref-world-clip --pretrained ref-world` (a shipped file path works without it)."""
    try:
        from .reference import register_reference_clip

        register_reference_clip()
    except Exception as error:  # an open_clip change must not cost the diffusion models
        warn(f"the reference CLIP could not be registered with open_clip ({type(error).__name__}: {error}); "
              "pass its file path as --pretrained instead")


@contextlib.contextmanager
def diffusion_run(options: Optional[argparse.Namespace], seed: int, record_path: Optional[str],
                  info: dict, shard: Any = None) -> Iterator[Any]:
    """Within this block, diffusion models loaded through clip_benchmark's `load_clip` use the
    settings of `options` (parsed `--diffusion_*` flags; None = defaults) under its protocol for
    `info["dataset"]`, and `seed`, write their per-image record to `record_path`, and serve
    `info["task"]`. Yields the settings."""
    options = options or diffusion_argument_parser().parse_args([])
    settings, protocol = settings_for_dataset(options, seed, info.get("dataset", ""))
    saved = dict(_state)
    _state["options"] = options
    _state["run"] = {"settings": settings, "record_path": record_path, "info": info, "shard": shard,
                     "protocol": protocol}
    own_record = rank_record_path(record_path, shard.rank) if shard is not None and record_path else record_path
    try:
        # locked before the model loads: a second run on the same record stops in seconds
        with record_lock(own_record) if own_record else contextlib.nullcontext():
            try:
                yield settings
            finally:
                if own_record:
                    close_recorders(own_record)  # a failed run's lines are on disk; let go of file and lock
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


def _wds_root(args: argparse.Namespace) -> Optional[str]:
    """A local `wds/` dataset's folder, `--dataset_root` filled in as clip_benchmark fills it; None
    for other datasets."""
    if not str(getattr(args, "dataset", "")).startswith("wds/"):
        return None
    name = _dataset_name(args)
    return args.dataset_root.format(dataset=name, dataset_cleaned=name.replace("/", "-"))


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
    options = _state["options"] or diffusion_argument_parser().parse_args([])
    settings = settings_for_dataset(options, args.seed, args.dataset)[0]
    _, index = locate(args.pretrained, cache_dir=args.model_cache_dir, settings=settings)
    from .safety import class_count_problem, ignored_by_family, prefilter_problem

    for message in ignored_by_family(settings, str(index.get("_class_name", ""))):
        _warn_once(message)

    classes = _class_count(args) if task == "zeroshot_classification" else None
    problem = prefilter_problem(settings) or class_count_problem(settings, classes)
    if problem:
        raise DiffusionUsageError(problem)
    if classes:  # the per-draw tables of one clip_benchmark batch, before the model loads
        from .safety import check_table_memory, table_draws

        from .strategies import make_strategy

        check_table_memory(args.batch_size, classes, table_draws(make_strategy(settings).max_draws(),
                                                                 settings.max_calls))
    return task


def _class_count(args: argparse.Namespace) -> Optional[int]:
    """The number of classes, when it can be read without building the dataset (a custom classname
    file, or a local wds/ dataset's classnames.txt); None otherwise."""
    path, root = getattr(args, "custom_classname_file", None), _wds_root(args)
    if not path and root:
        path = os.path.join(root, "classnames.txt")
    try:
        with open(path, encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())
    except (OSError, TypeError):
        return None


def _predictions_path(args: argparse.Namespace) -> Optional[str]:
    """`X.predictions.jsonl` beside a classification run's result `X.json` (any model): the report's
    confidence intervals and paired tests need per-image correctness, which the result JSON lacks."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    task = get_dataset_default_task(_dataset_name(args)) if args.task == "auto" else args.task
    return os.path.abspath(os.path.splitext(_output_path(args, task))[0] + ".predictions.jsonl") \
        if task == "zeroshot_classification" else None


def _patch_cli(cli_module) -> None:
    """Wrap the CLI's parse and run and two metric functions; every wrapper passes any call it
    does not serve (a non-diffusion model) through unchanged, whatever its arguments."""
    from clip_benchmark.metrics import image_caption_selection, zeroshot_classification

    original_parse = _expect(cli_module, "get_parser_args")
    original_run = _expect(cli_module, "run")
    original_classification = _expect(zeroshot_classification, "run_classification")
    original_selection = _expect(image_caption_selection, "evaluate")
    original_classification_evaluate = _expect(zeroshot_classification, "evaluate")

    def get_parser_args(*args, **kwargs):
        parser = diffusion_argument_parser()
        options, rest = parser.parse_known_args(sys.argv[1:])
        options.diffusion_explicit = explicit_flags(sys.argv[1:])
        _state["options"] = options
        asks_help = any(flag in rest for flag in ("-h", "--help"))
        if rest[:1] == ["eval"] and not asks_help:
            _usage_error(abbreviated_flag_error(rest, parser))
        saved = sys.argv
        sys.argv = [saved[0]] + rest
        try:
            parsed = original_parse(*args, **kwargs)
        except SystemExit:
            if asks_help and rest and rest[0] == "eval":
                print()
                print(group_help(parser), end="")
            raise
        finally:
            sys.argv = saved
        if isinstance(parsed, tuple) and len(parsed) == 2 and getattr(parsed[1], "which", None) == "eval":
            _check_before_loading(parsed[1], rest)
        return parsed

    def run(args, *more, **kwargs):
        diffusion = is_diffusion_model(getattr(args, "model_type", None), getattr(args, "model", None))
        _state["report_data"] = diffusion or getattr(_state["options"], "diffusion_predictions", False)
        _fit_workers_to_shards(args)
        try:
            if diffusion:
                return run_diffusion(args, *more, **kwargs)
            _warn_unused_diffusion_flags(args)
            _state["run"] = None
            # any model's classification run keeps per-image predictions (a small side file): the
            # report's intervals and paired tests need them
            _state["predictions"] = _predictions_path(args)
            return original_run(args, *more, **kwargs)
        finally:  # never used by a later, unrelated run_classification call
            _state["predictions"], _state["report_data"] = None, False
            _state["summary"], _state["model"] = None, None

    def run_diffusion(args, *more, **kwargs):
        own_record = None
        try:
            task = _check_diffusion_run(args)
            _warn_ignored_flags()
            output = _output_path(args, task)
            _state["predictions"] = _predictions_path(args)
            options = _state["options"]
            record_path = (options and options.diffusion_records) or (os.path.splitext(output)[0] + ".diffusion.jsonl")
            info = {"dataset": args.dataset, "pretrained": args.pretrained, "task": task, "result_json": output,
                    "model_name": args.model, "language": args.language}
            problem = output_problem(record_path, output, _state["predictions"], args.skip_existing)
            if problem:
                raise RecordError(problem)
            shard = _shard_for(args, record_path)
            own_record = rank_record_path(record_path, shard.rank) if shard is not None else record_path
            limit = getattr(options, "diffusion_limit", 0) or 0
            if args.skip_existing and os.path.exists(output) and not limit:
                if args.verbose:
                    print(f"Skip {output}, exists already.")
                return None
            if shard is not None:  # before the model loads: a rank with other flags must not hang or waste work
                shard.agree("settings or output", _run_identity(args, output, record_path, options), job=True)
            if shard is not None and shard.rank != 0:
                # every rank runs clip_benchmark's evaluation; only rank 0's result JSON is the result
                output, args.skip_existing, _state["predictions"] = os.devnull, False, None
            if limit:  # a quick look is no result: the record keeps its images for the full run
                output, args.skip_existing, _state["predictions"] = os.devnull, False, None
            _state["expected_images"] = _expected_images(args, limit)
            started = time.perf_counter()
            with diffusion_run(options, args.seed, record_path, info, shard=shard) as settings, \
                    quiet_third_party_output(_metric_modules()):
                protocol = _state["run"]["protocol"]
                args.output = output.replace("{", "{{").replace("}", "}}")
                args.model_type = MODEL_TYPE
                written_before = os.path.getmtime(output) if os.path.isfile(output) else None
                try:
                    with _protocol_templates(args, protocol, task):
                        result = original_run(args, *more, **kwargs)
                except ValueError as error:  # clip_benchmark's own word for a dataset name it does not know
                    if not str(error).startswith("Unsupported dataset"):
                        raise
                    raise DiffusionUsageError(f"clip_benchmark: {error} (see clip_benchmark's dataset list; local "
                                              "webdatasets are wds/NAME with --dataset_root)") from None
                if output != os.devnull and os.path.isfile(output) and os.path.getmtime(output) != written_before:
                    _add_protocol(output, protocol, settings, record_path)
            _print_summary(time.perf_counter() - started, None if output == os.devnull else output, limit)
            return result
        except DiffusionClassifierError as error:  # every kind of errors.py: one line, exit 2
            print(error_line(error), file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            _report_interrupt(own_record)
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
        except OSError as error:
            if error.errno not in _STORAGE_ERRORS:
                raise
            print(f"clip_benchmark_diffusion: error: {error.strerror} writing {error.filename or 'a file'}; every "
                  "image line written before is kept in the record (rerun to resume once there is room)",
                  file=sys.stderr)
            raise SystemExit(2) from None

    def run_classification(model, *args, **kwargs):
        diffusion = getattr(model, "is_diffusion_classifier", False)
        if not diffusion and not _state.get("report_data") and not _state.get("predictions"):
            return original_classification(model, *args, **kwargs)  # untouched: a plain CLIP run
        if diffusion:
            bound = _bound_arguments(original_classification, model, args, kwargs)
            limit = getattr(_state["options"], "diffusion_limit", 0) or 0
            if bound and limit:
                bound["dataloader"] = _FirstImages(bound["dataloader"], limit)
                args, kwargs = (), {k: v for k, v in bound.items() if k != "model"}
            model.expected_images = _state.get("expected_images")
            try:
                model.expected_images = len(bound["dataloader"].dataset)
                model.expected_images = min(model.expected_images, limit or model.expected_images)
            except (TypeError, AttributeError, KeyError):
                pass  # iterable (webdataset) datasets have no length
        result = original_classification(model, *args, **kwargs)
        if diffusion and model.complete_shards():  # rank 0 of several: once more, every image from the record
            result = original_classification(model, *args, **kwargs)
        logits, target = result if isinstance(result, tuple) and len(result) == 2 else (None, None)
        labels = target.tolist() if getattr(target, "dim", lambda: 0)() == 1 else None
        if labels is not None and _state.get("predictions"):
            _write_predictions(_state.pop("predictions"), logits.argmax(dim=1).tolist(), labels)
        if diffusion:
            model.finish(labels=labels)
            if labels is not None:
                correct = int((logits.argmax(dim=1) == target).sum())
                _state["summary"] = {"metric": "acc1", "correct": correct, "n": len(labels), "model": model}
        return result

    def classification_evaluate(model, *args, **kwargs):
        """Diffusion runs with `templates="single"`: one canonical prompt per class (the papers' protocol)."""
        run = _state.get("run") or {}
        if not getattr(model, "is_diffusion_classifier", False) or run.get("settings") is None \
                or run["settings"].templates != "single":
            return original_classification_evaluate(model, *args, **kwargs)
        bound = inspect.signature(original_classification_evaluate).bind(model, *args, **kwargs)
        bound.arguments["templates"] = canonical_templates(run["info"].get("dataset", ""), bound.arguments["templates"])
        return original_classification_evaluate(*bound.args, **bound.kwargs)

    def evaluate(model, *args, **kwargs):
        diffusion = getattr(model, "is_diffusion_classifier", False) and model.task == "image_caption_selection"
        if not diffusion and not _state.get("report_data"):
            return original_selection(model, *args, **kwargs)  # untouched: a plain CLIP run
        bound = inspect.signature(original_selection).bind(model, *args, **kwargs)
        limit = (getattr(_state["options"], "diffusion_limit", 0) or 0) if diffusion else 0
        loader = bound.arguments["dataloader"] = _LayoutReportingLoader(bound.arguments["dataloader"], model, limit)
        if diffusion:
            model.expected_images = _state.get("expected_images")
        metrics = original_selection(*bound.args, **bound.kwargs)
        if diffusion and model.complete_shards():
            loader.instances = 0
            metrics = original_selection(*bound.args, **bound.kwargs)
        if diffusion:
            model.finish()
            if isinstance(metrics.get("text_acc"), (int, float)) and loader.instances:
                _state["summary"] = {"metric": "text_acc", "correct": round(metrics["text_acc"] * loader.instances),
                                     "n": loader.instances, "model": model}
        # with one image per instance, image_acc is 1 by construction: the report says so instead of 100%
        return {**metrics, "instances": loader.instances, "images_per_instance": loader.images_per_instance}

    _set_attribute(cli_module, "get_parser_args", get_parser_args)
    _set_attribute(cli_module, "run", run)
    _set_attribute(zeroshot_classification, "run_classification", run_classification)
    _set_attribute(image_caption_selection, "evaluate", evaluate)
    _set_attribute(zeroshot_classification, "evaluate", classification_evaluate)


@contextlib.contextmanager
def _protocol_templates(args: argparse.Namespace, protocol: dict, task: str) -> Iterator[None]:
    """During one dataset's run, clip_benchmark reads the protocol's prompt for it from a temporary
    `--custom_template_file` (unless the user gave one: that wins, and is recorded if it differs)."""
    from .protocols import apply_prompt, dataset_keys

    if task != "zeroshot_classification":
        protocol["prompt"] = "the instance's own captions (no templates in this task)"
        yield
        return
    templates = apply_prompt(protocol, args.custom_template_file)
    if templates is None:
        yield
        return
    import json
    import tempfile

    handle, path = tempfile.mkstemp(prefix="cbd-protocol-", suffix=".json")
    saved = args.custom_template_file
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump({key: templates for key in dataset_keys(args.dataset) + ["imagenet1k"]}, file)
        args.custom_template_file = path
        protocol["prompt_source"] = "protocol"
        yield
    finally:
        args.custom_template_file = saved
        os.remove(path)


def _add_protocol(output: str, protocol: dict, settings: ScorerSettings, record_path: str) -> None:
    """The result JSON says how it was computed: a top-level `protocol` label (a column of the
    leaderboard and of `clip_benchmark build`) and a `diffusion` section (protocol, settings, record)."""
    import json

    with open(output, encoding="utf-8") as handle:
        dump = json.load(handle)
    dump["protocol"] = protocol["label"]
    dump["diffusion"] = {"protocol": protocol, "settings": settings.to_dict(), "record": os.path.basename(record_path)}
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(dump, handle)


def _usage_error(message: Optional[str]) -> None:
    """Stop with one line (exit code 2, argparse's) if there is a message."""
    if message:
        print(error_line(message), file=sys.stderr)
        raise SystemExit(2)


def _check_before_loading(args: argparse.Namespace, argv: list) -> None:
    """Mistakes in `clip_benchmark eval` arguments that would otherwise surface as a traceback after
    the model has loaded: a model name close to a diffusion one, an unknown dataset, a `wds/` dataset
    without its files, a diffusion run without --dataset_root."""
    from .datasets import check_dataset, dataset_root_given, expand_dataset_arguments

    models = list(args.model) if isinstance(args.model, (list, tuple)) else [args.model]
    if not args.pretrained_model:
        for name in models:
            suggestion = None if is_diffusion_model(args.model_type, name) else \
                model_suggestion(name, DIFFUSION_MODEL_NAMES)
            if suggestion:
                _usage_error(f"--model {name}: no such model; did you mean --model {suggestion}?")
    diffusion = args.model_type == MODEL_TYPE or any(name in DIFFUSION_MODEL_NAMES for name in models)
    datasets = args.dataset if isinstance(args.dataset, (list, tuple)) else [args.dataset]
    try:
        for name in expand_dataset_arguments(datasets):
            check_dataset(name, args.dataset_root, args.split, dataset_root_given(argv), strict_root=diffusion,
                          task=args.task)
    except DatasetError as error:
        _usage_error(str(error))


def _fit_workers_to_shards(args: argparse.Namespace) -> None:
    """A local wds split with fewer shards than --num_workers: clip_benchmark's extra workers find no
    shard and webdataset raises "No samples found" after every image was scored. Use one worker per
    shard instead (the results are the same)."""
    from .datasets import wds_shard_count

    root = _wds_root(args)
    if root is None or getattr(args, "num_workers", 0) <= 1:
        return
    shards = wds_shard_count(root, args.split)
    if shards and shards < args.num_workers:
        args.num_workers = shards


def _expected_images(args: argparse.Namespace, limit: int) -> Optional[int]:
    """How many images the run will pass (a local wds split's count from its tar headers), for the
    progress bar's total and time left; None if unknown."""
    from .datasets import wds_sample_count

    root = _wds_root(args)
    count = wds_sample_count(root, args.split) if root is not None else None
    if limit:
        count = min(count, limit) if count is not None else limit
    return count


def _metric_modules() -> list:
    from clip_benchmark.metrics import image_caption_selection, zeroshot_classification

    return [zeroshot_classification, image_caption_selection]


def _print_summary(seconds: float, output: Optional[str], limit: int) -> None:
    """The run's one closing line: accuracy with its interval, images, network calls, time."""
    summary = _state.get("summary")
    if not summary:
        return
    model = summary["model"]
    scored = getattr(model, "images_scored", 0)
    reused = getattr(model, "images_reused", 0)
    where = f"result: {output}" if output else \
        (f"quick look at the first {limit} images (no result JSON; rerun without --diffusion_limit to score "
         f"the rest, these are reused)" if limit else None)
    say(summary_line(summary["metric"], summary["correct"], summary["n"], model.calls, scored, reused, seconds,
                     where))


def _report_interrupt(record: Optional[str]) -> None:
    """Ctrl-C: close the bar, then one line: how many images are saved, where, and that a rerun resumes."""
    from .records import read_records

    model = _state.get("model")
    bar = getattr(model, "_progress", None)
    if bar is not None:
        bar.close()
    saved = 0
    if record and os.path.isfile(record):
        try:
            saved = len(read_records(record)["images"])
        except Exception:
            saved = 0
    print(file=sys.stderr)
    say(interrupted_line(saved, getattr(model, "images_scored", 0), record))


class _FirstImages:
    """The first `limit` images of a classification dataloader (the last batch cut short)."""

    def __init__(self, dataloader, limit: int) -> None:
        self.dataloader, self.limit = dataloader, limit

    def __iter__(self):
        left = self.limit
        for images, target in self.dataloader:
            if left <= 0:
                return
            yield images[:left], target[:left]
            left -= len(images)

    def __len__(self) -> int:
        try:
            batch = self.dataloader.batch_size or 1
            return min(len(self.dataloader), -(-self.limit // batch))
        except TypeError:
            raise TypeError("length unknown") from None


def _run_identity(args: argparse.Namespace, output: str, record_path: str, options: Any) -> dict:
    """What every rank of a job must share (compared before the model loads; weights after)."""
    from .settings import RECORD_IGNORED_SETTINGS

    settings = settings_for_dataset(options, args.seed, args.dataset)[0]
    values = {f"--diffusion_{k}" if k != "seed" else "--seed": v for k, v in settings.to_dict().items()
              if k not in RECORD_IGNORED_SETTINGS}
    values.update({"--output": os.path.abspath(output), "--diffusion_records": os.path.abspath(record_path),
                   "--pretrained": args.pretrained, "--dataset": args.dataset, "--task": args.task})
    return values


def _warn_ignored_flags() -> None:
    """Flags the chosen objective does not use: said once, not silently ignored."""
    from .safety import ignored_flag_warnings

    options = _state["options"]
    if options is not None:
        for message in ignored_flag_warnings(options, diffusion_argument_parser().parse_args([])):
            _warn_once(message)


def _warn_unused_diffusion_flags(args: argparse.Namespace) -> None:
    """`--diffusion_*` flags on a run of another model (a CLIP) change nothing: say so."""
    from .safety import diffusion_flags_given

    options = _state["options"]
    given = diffusion_flags_given(options, diffusion_argument_parser().parse_args([])) if options else []
    if given:
        _warn_once(f"{', '.join(given)} only apply to diffusion models; model '{getattr(args, 'model', '?')}' "
                   "ignores them")


_WARNED: set = set()


def _warn_once(message: str) -> None:
    """clip_benchmark calls `run` once per model x dataset: a warning about the flags is said once."""
    if message not in _WARNED:
        _WARNED.add(message)
        warn(message)


#: errors that mean "the disk cannot take it" rather than a bug: one line, not a traceback
_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _shard_for(args: argparse.Namespace, record_path: str):
    """This process's shard of the run when launched as several processes (torchrun, srun), else None."""
    from .integration.ranks import shard_from_env

    try:
        shard = shard_from_env()
    except RuntimeError as error:
        raise DiffusionUsageError(str(error)) from None
    if shard is None:
        return None
    if getattr(args, "distributed", False):
        raise DiffusionUsageError("--distributed spreads whole runs over ranks; a diffusion run is split image by "
                                  "image across the ranks that torchrun/srun started: drop --distributed")
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(shard.local_rank)  # clip_benchmark's "cuda" is then this rank's own GPU
    return shard.for_run(os.path.abspath(record_path))


def _write_predictions(path: str, predictions: list[int], labels: list[int]) -> None:
    """`X.predictions.jsonl`: per-image correctness, which the report's intervals and paired tests need
    and clip_benchmark's result JSON lacks."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f'{{"index": {i}, "prediction": {p}, "label": {t}}}\n'
                          for i, (p, t) in enumerate(zip(predictions, labels)))


def _bound_arguments(function, first: Any, args: tuple, kwargs: dict) -> dict:
    """{parameter: value} of the call `function(first, *args, **kwargs)` ({} if it does not bind)."""
    try:
        return dict(inspect.signature(function).bind(first, *args, **kwargs).arguments)
    except (TypeError, ValueError):
        return {}


class _LayoutReportingLoader:
    """Iterates a caption-selection dataloader unchanged (up to `limit` instances if > 0), telling
    the model each batch's (images, captions) per instance before clip_benchmark encodes it."""

    def __init__(self, dataloader, model, limit: int = 0) -> None:
        self.dataloader, self.model, self.limit = dataloader, model, limit
        self.instances, self.images_per_instance = 0, 0  # for the report's intervals (any model)

    def __iter__(self):
        for batch_images, batch_texts in self.dataloader:
            if self.limit:
                if self.instances >= self.limit:
                    return
                keep = self.limit - self.instances
                batch_images, batch_texts = batch_images[:keep], batch_texts[:keep]
            images_per = 1 if batch_images.dim() == 4 else batch_images.shape[1]
            self.instances += len(batch_texts)
            self.images_per_instance = max(self.images_per_instance, images_per)
            if hasattr(self.model, "caption_layout"):
                self.model.caption_layout = (images_per, len(batch_texts[0]))
            yield batch_images, batch_texts

    def __len__(self) -> int:
        return len(self.dataloader)


# --------------------------------------------------------------------------- patching safely
#: how to restore everything patched so far, newest last
_UNDO: list = []
_registration: dict[str, Any] = {"disabled": None, "patched": set()}


def _expect(owner: Any, name: str, kind: type | None = None) -> Any:
    value = getattr(owner, name, None)
    if value is None or (kind is not None and not isinstance(value, kind)) or (kind is None and not callable(value)):
        what = f"a {kind.__name__}" if kind else "a function"
        raise HostChanged(f"{owner.__name__}.{name} is missing or no longer {what}")
    return value


def _set_attribute(owner: Any, name: str, value: Any) -> None:
    original = getattr(owner, name)
    setattr(owner, name, value)
    _UNDO.append(lambda: setattr(owner, name, original))


def _set_item(table: dict, key: str, value: Any) -> None:
    had, original = key in table, table.get(key)
    table[key] = value
    _UNDO.append(lambda: table.__setitem__(key, original) if had else table.pop(key, None))



def _disable(reason: str) -> None:
    """Undo every patch and stay off: clip_benchmark works as if the plugin were not installed."""
    while _UNDO:
        _UNDO.pop()()
    _registration["disabled"] = reason
    warn(f"diffusion models are disabled, clip_benchmark itself works as usual: {reason}. "
          "Update clip-benchmark-diffusion, or install the clip-benchmark version it supports (1.6.x)")


def _patch_once(module) -> None:
    """Patch one clip_benchmark module; never raises (a failure disables the plugin instead)."""
    name = getattr(module, "__name__", "")
    if _registration["disabled"] or name in _registration["patched"]:
        return
    try:
        (_patch_models if name == "clip_benchmark.models" else _patch_cli)(module)
        _registration["patched"].add(name)
    except HostChanged as error:
        _disable(str(error))
    except Exception as error:  # anything unexpected in someone else's program: step aside
        _disable(f"registering with {name} failed ({type(error).__name__}: {error})")


# --------------------------------------------------------------------------- entry points
def register_module(module) -> None:
    """Patch one freshly imported clip_benchmark module (called by the import hook)."""
    if getattr(module, "__name__", "") in ("clip_benchmark.models", "clip_benchmark.cli"):
        _patch_once(module)


def register() -> bool:
    """Register explicitly (idempotent): for `python -m clip_benchmark_diffusion` and Python use.
    Returns False (after one warning) when this clip_benchmark cannot be served."""
    import clip_benchmark.cli
    import clip_benchmark.models

    _patch_once(clip_benchmark.models)
    _patch_once(clip_benchmark.cli)
    return _registration["disabled"] is None
