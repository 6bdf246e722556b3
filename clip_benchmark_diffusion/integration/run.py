"""The one typed object a run's wrappers share, instead of a module-level dict.

clip_benchmark calls our code at several unrelated points of one `eval` command (its parser, its
`run`, its model loader, its metric functions) and hands nothing of ours from one to the next.
`session()` is what they share: the parsed `--diffusion_*` options and, during a diffusion run, a
`DiffusionRun` whose settings are built once (before any compute) and whose checkpoint is located
once; the load gets both from it.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import os
from typing import TYPE_CHECKING, Any, Iterator, Optional

from ..errors import DiffusionUsageError
from ..records import close_recorders, record_lock
from ..settings import ScorerSettings
from .flags import default_options, settings_for_dataset, warn_once
from .outputs import task_of, wds_root
from .ranks import rank_record_path

if TYPE_CHECKING:  # only a type here; the checkpoints module loads lazily
    from ..checkpoints import Located

DIFFUSION_MODEL_NAMES = ("sd-diffusion",)
MODEL_TYPE = "diffusion"
SUPPORTED_TASKS = ("zeroshot_classification", "image_caption_selection")


def is_diffusion_model(model_type: str, model_name: str) -> bool:
    return model_type == MODEL_TYPE or model_name in DIFFUSION_MODEL_NAMES


def effective_model_type(model_type: str, model_name: str) -> str:
    """`--model sd-diffusion` works under clip_benchmark's default model type too."""
    return MODEL_TYPE if is_diffusion_model(model_type, model_name) else model_type


@dataclasses.dataclass
class DiffusionRun:
    """One dataset's diffusion run, as its model load and the metric wrappers need it."""

    options: argparse.Namespace  # the parsed `--diffusion_*` flags (their `diffusion_explicit` included)
    settings: ScorerSettings  # built once per dataset run, under the dataset's protocol
    protocol: dict  # the protocol's record (see `protocols.resolve`)
    task: str = "zeroshot_classification"
    info: dict = dataclasses.field(default_factory=dict)  # the record header's `run`
    record_path: Optional[str] = None
    shard: Any = None  # this process's `ranks.Shard` for the run, or None
    checkpoint: Optional[Located] = None  # what the pre-load check located; the load uses it

    @property
    def own_record(self) -> Optional[str]:
        """The record file this process writes (a rank other than 0 writes its own beside the run's)."""
        if self.shard is not None and self.record_path:
            return rank_record_path(self.record_path, self.shard.rank)
        return self.record_path


@dataclasses.dataclass
class Session:
    """What the wrappers of one clip_benchmark command share; the per-`run` fields are reset after each run."""

    options: Optional[argparse.Namespace] = None  # the command line's `--diffusion_*` flags
    diffusion: Optional[DiffusionRun] = None  # the diffusion run under way, if any
    predictions: Optional[str] = None  # `X.predictions.jsonl` still to write for this run
    report_data: bool = False  # add the report's instance counts to caption-selection metrics
    expected_images: Optional[int] = None  # for the progress bar's total
    model: Any = None  # the loaded diffusion model (for the Ctrl-C line and the summary line)
    summary: Optional[dict] = None  # what the summary line reports

    def end_run(self) -> None:
        """Nothing of one `run` is used by a later, unrelated one."""
        self.predictions, self.report_data, self.summary, self.model = None, False, None, None


_SESSION: contextvars.ContextVar[Optional[Session]] = contextvars.ContextVar("clip_benchmark_diffusion_session",
                                                                             default=None)


def session() -> Session:
    """The current command's shared state (created on first use)."""
    current = _SESSION.get()
    if current is None:
        current = Session()
        _SESSION.set(current)
    return current


def options_or_defaults() -> argparse.Namespace:
    """The command line's `--diffusion_*` options, or every flag's default (Python use)."""
    return session().options or default_options()


# --------------------------------------------------------------------------- before any compute
def prepare_diffusion_run(args: argparse.Namespace, options: argparse.Namespace) -> DiffusionRun:
    """Everything that would fail late, checked before any compute: the task, the settings (built
    here, once), the checkpoint (located here, once), the class count, the pre-filter, the memory of
    the per-draw tables."""
    from ..checkpoints import locate
    from ..safety import check_table_memory, class_count_problem, ignored_by_family, prefilter_problem, table_draws
    from ..strategies import make_strategy

    task = task_of(args)
    if task not in SUPPORTED_TASKS:
        raise DiffusionUsageError(f"task '{task}' is not supported for diffusion models (model '{args.model}'); "
                                  f"supported: {', '.join(SUPPORTED_TASKS)}")
    if args.load_clfs:
        raise DiffusionUsageError("--load_clfs cannot be used with diffusion models: their class scores are not a "
                                  "fixed linear classifier; drop --load_clfs")
    settings, protocol = settings_for_dataset(options, args.seed, args.dataset)
    located = locate(args.pretrained, cache_dir=args.model_cache_dir, settings=settings)
    for message in ignored_by_family(settings, str(located.index.get("_class_name", ""))):
        warn_once(message)
    classes = class_count(args) if task == "zeroshot_classification" else None
    problem = prefilter_problem(settings) or class_count_problem(settings, classes)
    if problem:
        raise DiffusionUsageError(problem)
    if classes:  # the per-draw tables of one clip_benchmark batch, before the model loads
        check_table_memory(args.batch_size, classes, table_draws(make_strategy(settings).max_draws(),
                                                                 settings.max_calls))
    return DiffusionRun(options=options, settings=settings, protocol=protocol, task=task, checkpoint=located)


def class_count(args: argparse.Namespace) -> Optional[int]:
    """The number of classes, when it can be read without building the dataset (a custom classname
    file, or a local wds/ dataset's classnames.txt); None otherwise."""
    path, root = getattr(args, "custom_classname_file", None), wds_root(args)
    if not path and root:
        path = os.path.join(root, "classnames.txt")
    try:
        with open(path, encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())
    except (OSError, TypeError):
        return None


def shard_for(args: argparse.Namespace, record_path: str):
    """This process's shard of the run when launched as several processes (torchrun, srun), else None."""
    from .ranks import shard_from_env

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


def run_identity(args: argparse.Namespace, output: str, record_path: str, settings: ScorerSettings) -> dict:
    """What every rank of a job must share (compared before the model loads; weights after)."""
    from ..settings import RECORD_IGNORED_SETTINGS

    values = {f"--diffusion_{k}" if k != "seed" else "--seed": v for k, v in settings.to_dict().items()
              if k not in RECORD_IGNORED_SETTINGS}
    values.update({"--output": os.path.abspath(output), "--diffusion_records": os.path.abspath(record_path),
                   "--pretrained": args.pretrained, "--dataset": args.dataset, "--task": args.task})
    return values


# --------------------------------------------------------------------------- during the run
@contextlib.contextmanager
def active(run: DiffusionRun) -> Iterator[ScorerSettings]:
    """Within this block, diffusion models loaded through clip_benchmark's `load_clip` use `run`
    (its settings, record, task and checkpoint); its record is locked. Yields the settings."""
    current = session()
    saved = current.options, current.diffusion
    current.options, current.diffusion = run.options, run
    own_record = run.own_record
    try:
        # locked before the model loads: a second run on the same record stops in seconds
        with record_lock(own_record) if own_record else contextlib.nullcontext():
            try:
                yield run.settings
            finally:
                if own_record:
                    close_recorders(own_record)  # a failed run's lines are on disk; let go of file and lock
    finally:
        current.options, current.diffusion = saved


def diffusion_run(options: Optional[argparse.Namespace], seed: int, record_path: Optional[str],
                  info: dict, shard: Any = None) -> contextlib.AbstractContextManager:
    """Within this block, diffusion models loaded through clip_benchmark's `load_clip` use the
    settings of `options` (parsed `--diffusion_*` flags; None = defaults) under its protocol for
    `info["dataset"]`, and `seed`, write their per-image record to `record_path`, and serve
    `info["task"]`. Yields the settings. (For Python callers, the probes: `clip_benchmark eval`
    builds its run in `prepare_diffusion_run`, after its checks.)"""
    options = options or default_options()
    settings, protocol = settings_for_dataset(options, seed, info.get("dataset", ""))
    return active(DiffusionRun(options=options, settings=settings, protocol=protocol,
                               task=info.get("task", "zeroshot_classification"), info=info,
                               record_path=record_path, shard=shard))


def load_diffusion(model_name: str, pretrained: str, cache_dir: Optional[str] = None, device: Any = "cpu"):
    """clip_benchmark loader for diffusion models: `(model, transform, tokenizer)`, with the current
    run's settings and already located checkpoint (defaults outside a run)."""
    from .adapter import load_zero_shot_model

    current = session()
    run = current.diffusion
    if run is None:
        options = options_or_defaults()
        settings, protocol = settings_for_dataset(options, 0, "")
        run = DiffusionRun(options=options, settings=settings, protocol=protocol)
    loaded = load_zero_shot_model(pretrained, device, run.settings, record_path=run.record_path,
                                  run_info=run.info or None, cache_dir=cache_dir,
                                  show_progress=not run.options.diffusion_no_progress, task=run.task,
                                  shard=run.shard, protocol=run.protocol, checkpoint=run.checkpoint)
    current.model = loaded[0]  # for the Ctrl-C line and the summary line
    return loaded
