"""The wrappers of clip_benchmark's functions, and undoing them if the host changed.

What is patched, all in memory (clip_benchmark's files are never touched):

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

from ..console import (INTERRUPTED_EXIT_CODE, abbreviated_flag_error, group_help, interrupted_line, model_suggestion,
                       quiet_third_party_output, summary_line)
from ..errors import DatasetError, DiffusionClassifierError, DiffusionUsageError, HostChanged, RecordError, \
    error_line, say, warn
from ..prompts import canonical_templates
from ..safety import output_problem
from .flags import (default_options, diffusion_argument_parser, explicit_flags, warn_ignored_flags,
                    warn_unused_diffusion_flags)
from .outputs import add_protocol, default_record_path, output_path, predictions_path, wds_root, write_predictions
from .run import (DIFFUSION_MODEL_NAMES, MODEL_TYPE, active, is_diffusion_model, load_diffusion, prepare_diffusion_run,
                  run_identity, session, shard_for)


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


def patch_once(module: Any) -> None:
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


def disabled_reason() -> Optional[str]:
    """Why the plugin switched itself off (None while it serves clip_benchmark)."""
    return _registration["disabled"]


# --------------------------------------------------------------------------- clip_benchmark.models
def _patch_models(models_module) -> None:
    """Use clip_benchmark's one real extension point: a new key in its model-type registry."""
    type_to_loader = _expect(models_module, "TYPE2FUNC", dict)
    model_types = _expect(models_module, "MODEL_TYPES", list)
    _set_item(type_to_loader, MODEL_TYPE, load_diffusion)
    if MODEL_TYPE not in model_types:
        model_types.append(MODEL_TYPE)  # the same list object the CLI's --model_type choices use
        _UNDO.append(lambda: model_types.remove(MODEL_TYPE) if MODEL_TYPE in model_types else None)
    _register_reference_clip()


def _register_reference_clip() -> None:
    """Optional: `--model ref-world-clip --pretrained ref-world` (a shipped file path works without it)."""
    try:
        from ..reference import register_reference_clip

        register_reference_clip()
    except Exception as error:  # an open_clip change must not cost the diffusion models
        warn(f"the reference CLIP could not be registered with open_clip ({type(error).__name__}: {error}); "
              "pass its file path as --pretrained instead")


# --------------------------------------------------------------------------- clip_benchmark.cli
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
        session().options = options
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
        current = session()
        diffusion = is_diffusion_model(getattr(args, "model_type", None), getattr(args, "model", None))
        current.report_data = diffusion or getattr(current.options, "diffusion_predictions", False)
        _fit_workers_to_shards(args)
        try:
            if diffusion:
                return run_diffusion(args, *more, **kwargs)
            warn_unused_diffusion_flags(current.options, getattr(args, "model", "?"))
            current.diffusion = None
            # any model's classification run keeps per-image predictions (a small side file): the
            # report's intervals and paired tests need them
            current.predictions = predictions_path(args)
            return original_run(args, *more, **kwargs)
        finally:  # never used by a later, unrelated run_classification call
            current.end_run()

    def run_diffusion(args, *more, **kwargs):
        current, own_record = session(), None
        try:
            options = current.options or default_options()
            run = prepare_diffusion_run(args, options)
            warn_ignored_flags(current.options)
            output = output_path(args, run.task)
            current.predictions = predictions_path(args)
            record_path = options.diffusion_records or default_record_path(output)
            run.record_path = record_path
            run.info = {"dataset": args.dataset, "pretrained": args.pretrained, "task": run.task,
                        "result_json": output, "model_name": args.model, "language": args.language}
            problem = output_problem(record_path, output, current.predictions, args.skip_existing)
            if problem:
                raise RecordError(problem)
            shard = run.shard = shard_for(args, record_path)
            own_record = run.own_record
            limit = options.diffusion_limit or 0
            if args.skip_existing and os.path.exists(output) and not limit:
                if args.verbose:
                    print(f"Skip {output}, exists already.")
                return None
            if shard is not None:  # before the model loads: a rank with other flags must not hang or waste work
                shard.agree("settings or output", run_identity(args, output, record_path, run.settings), job=True)
            if shard is not None and shard.rank != 0:
                # every rank runs clip_benchmark's evaluation; only rank 0's result JSON is the result
                output, args.skip_existing, current.predictions = os.devnull, False, None
            if limit:  # a quick look is no result: the record keeps its images for the full run
                output, args.skip_existing, current.predictions = os.devnull, False, None
            current.expected_images = _expected_images(args, limit)
            started = time.perf_counter()
            with active(run) as settings, quiet_third_party_output(_metric_modules()):
                protocol = run.protocol
                args.output = output.replace("{", "{{").replace("}", "}}")
                args.model_type = MODEL_TYPE
                written_before = os.path.getmtime(output) if os.path.isfile(output) else None
                try:
                    with _protocol_templates(args, protocol, run.task):
                        result = original_run(args, *more, **kwargs)
                except ValueError as error:  # clip_benchmark's own word for a dataset name it does not know
                    if not str(error).startswith("Unsupported dataset"):
                        raise
                    raise DiffusionUsageError(f"clip_benchmark: {error} (see clip_benchmark's dataset list; local "
                                              "webdatasets are wds/NAME with --dataset_root)") from None
                if output != os.devnull and os.path.isfile(output) and os.path.getmtime(output) != written_before:
                    add_protocol(output, protocol, settings, record_path)
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
        current = session()
        diffusion = getattr(model, "is_diffusion_classifier", False)
        if not diffusion and not current.report_data and not current.predictions:
            return original_classification(model, *args, **kwargs)  # untouched: a plain CLIP run
        if diffusion:
            bound = _bound_arguments(original_classification, model, args, kwargs)
            limit = getattr(current.options, "diffusion_limit", 0) or 0
            if bound and limit:
                bound["dataloader"] = _FirstImages(bound["dataloader"], limit)
                args, kwargs = (), {k: v for k, v in bound.items() if k != "model"}
            model.expected_images = current.expected_images
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
        if labels is not None and current.predictions:
            write_predictions(current.predictions, logits.argmax(dim=1).tolist(), labels)
            current.predictions = None
        if diffusion:
            model.finish(labels=labels)
            if labels is not None:
                correct = int((logits.argmax(dim=1) == target).sum())
                current.summary = {"metric": "acc1", "correct": correct, "n": len(labels), "model": model}
        return result

    def classification_evaluate(model, *args, **kwargs):
        """Diffusion runs with `templates="single"`: one canonical prompt per class (the papers' protocol)."""
        run = session().diffusion
        if not getattr(model, "is_diffusion_classifier", False) or run is None or run.settings.templates != "single":
            return original_classification_evaluate(model, *args, **kwargs)
        bound = inspect.signature(original_classification_evaluate).bind(model, *args, **kwargs)
        bound.arguments["templates"] = canonical_templates(run.info.get("dataset", ""), bound.arguments["templates"])
        return original_classification_evaluate(*bound.args, **bound.kwargs)

    def evaluate(model, *args, **kwargs):
        current = session()
        diffusion = getattr(model, "is_diffusion_classifier", False) and model.task == "image_caption_selection"
        if not diffusion and not current.report_data:
            return original_selection(model, *args, **kwargs)  # untouched: a plain CLIP run
        bound = inspect.signature(original_selection).bind(model, *args, **kwargs)
        limit = (getattr(current.options, "diffusion_limit", 0) or 0) if diffusion else 0
        loader = bound.arguments["dataloader"] = _LayoutReportingLoader(bound.arguments["dataloader"], model, limit)
        if diffusion:
            model.expected_images = current.expected_images
        metrics = original_selection(*bound.args, **bound.kwargs)
        if diffusion and model.complete_shards():
            loader.instances = 0
            metrics = original_selection(*bound.args, **bound.kwargs)
        if diffusion:
            model.finish()
            if isinstance(metrics.get("text_acc"), (int, float)) and loader.instances:
                current.summary = {"metric": "text_acc", "correct": round(metrics["text_acc"] * loader.instances),
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
    from ..protocols import apply_prompt, dataset_keys

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


def _usage_error(message: Optional[str]) -> None:
    """Stop with one line (exit code 2, argparse's) if there is a message."""
    if message:
        print(error_line(message), file=sys.stderr)
        raise SystemExit(2)


def _check_before_loading(args: argparse.Namespace, argv: list) -> None:
    """Mistakes in `clip_benchmark eval` arguments that would otherwise surface as a traceback after
    the model has loaded: a model name close to a diffusion one, an unknown dataset, a `wds/` dataset
    without its files, a diffusion run without --dataset_root."""
    from ..datasets import check_dataset, dataset_root_given, expand_dataset_arguments

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
    from ..datasets import wds_shard_count

    root = wds_root(args)
    if root is None or getattr(args, "num_workers", 0) <= 1:
        return
    shards = wds_shard_count(root, args.split)
    if shards and shards < args.num_workers:
        args.num_workers = shards


def _expected_images(args: argparse.Namespace, limit: int) -> Optional[int]:
    """How many images the run will pass (a local wds split's count from its tar headers), for the
    progress bar's total and time left; None if unknown."""
    from ..datasets import wds_sample_count

    root = wds_root(args)
    count = wds_sample_count(root, args.split) if root is not None else None
    if limit:
        count = min(count, limit) if count is not None else limit
    return count


def _metric_modules() -> list:
    from clip_benchmark.metrics import image_caption_selection, zeroshot_classification

    return [zeroshot_classification, image_caption_selection]


def _print_summary(seconds: float, output: Optional[str], limit: int) -> None:
    """The run's one closing line: accuracy with its interval, images, network calls, time."""
    summary = session().summary
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
    from ..records import read_records

    model = session().model
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


#: errors that mean "the disk cannot take it" rather than a bug: one line, not a traceback
_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


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


