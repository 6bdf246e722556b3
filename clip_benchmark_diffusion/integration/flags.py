"""The `--diffusion_*` flags, and parsed options -> `ScorerSettings` under a protocol.

clip_benchmark's own parser never sees these flags: the patched `get_parser_args` takes them off
the command line with `diffusion_argument_parser()` first (see `patches.py`).
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from ..console import with_defaults
from ..errors import DiffusionUsageError, warn
from ..protocols import DEFAULT_PROTOCOL, check_protocol, protocol_names
from ..settings import (COMPILE_MODES, DTYPES, LOSSES, OBJECTIVES, SIGMA_DISTRIBUTIONS, STRATEGIES, TEMPLATE_MODES,
                        TIMESTEP_SAMPLERS, TTEST_VARIANCES, ScorerSettings)
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
    from ..protocols import resolve

    options = options or default_options()
    explicit = getattr(options, "diffusion_explicit", None)
    if explicit is None:  # built in Python: what differs from the flag defaults counts as given
        defaults = vars(default_options())
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
        from ..weighting import read_bucket_weights

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


def default_options() -> argparse.Namespace:
    """Every `--diffusion_*` flag at its default (a run started from Python without flags)."""
    return diffusion_argument_parser().parse_args([])


# --------------------------------------------------------------------------- flag warnings
_WARNED: set = set()


def warn_once(message: str) -> None:
    """clip_benchmark calls `run` once per model x dataset: a warning about the flags is said once."""
    if message not in _WARNED:
        _WARNED.add(message)
        warn(message)


def warn_ignored_flags(options: Optional[argparse.Namespace]) -> None:
    """Flags the chosen objective does not use: said once, not silently ignored."""
    from ..safety import ignored_flag_warnings

    if options is not None:
        for message in ignored_flag_warnings(options, default_options()):
            warn_once(message)


def warn_unused_diffusion_flags(options: Optional[argparse.Namespace], model: str) -> None:
    """`--diffusion_*` flags on a run of another model (a CLIP) change nothing: say so."""
    from ..safety import diffusion_flags_given

    given = diffusion_flags_given(options, default_options()) if options else []
    if given:
        warn_once(f"{', '.join(given)} only apply to diffusion models; model '{model}' ignores them")
