"""The `--diffusion_*` flags, and parsed options -> `ScorerSettings` under a protocol.

Every flag is declared once. A scorer setting's flag is declared with the setting itself
(`settings.Flag` on its `ScorerSettings` field: type, choices, default and help come from there);
the flags below (`OTHER_FLAGS`) set several settings at once, or none (the run's own). The parser,
`--help`, the README flags table (`console.flags_table`), the option -> setting mapping and
`FLAG_SETTINGS` (which settings a flag overrides in a protocol) are all derived from them.

clip_benchmark's own parser never sees these flags: the patched `get_parser_args` takes them off
the command line with `diffusion_argument_parser()` first (see `patches.py`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import Any, Callable, Optional, get_args, get_origin, get_type_hints

from ..console import with_defaults
from ..errors import DiffusionUsageError, warn
from ..protocols import DEFAULT_PROTOCOL, check_protocol, protocol_names
from ..settings import SETTING_CHOICES, ScorerSettings

PREFIX = "diffusion_"


@dataclasses.dataclass(frozen=True)
class SettingFlag:
    """The flag of one scorer setting, as its field declares it."""

    setting: str  # the ScorerSettings field
    dest: str  # argparse dest: `diffusion_<flag name>`
    arguments: dict  # for `add_argument`


@dataclasses.dataclass(frozen=True)
class OtherFlag:
    """A flag that is not one scorer setting: it sets several (`sets`, through `to_values`), or none."""

    name: str  # without `--diffusion_`
    help: str
    sets: tuple[str, ...] = ()  # the ScorerSettings fields it decides (a protocol's value is then overridden)
    #: (the flag's value, all parsed options) -> ScorerSettings fields; called only when the flag is given
    to_values: Optional[Callable[[Any, argparse.Namespace], dict]] = None
    arguments: dict = dataclasses.field(default_factory=dict)  # for `add_argument`, besides help

    @property
    def dest(self) -> str:
        return PREFIX + self.name


@functools.lru_cache(maxsize=None)
def setting_flags() -> tuple[SettingFlag, ...]:
    """The flags declared on `ScorerSettings` fields, in field order (read once: the fields never change)."""
    hints = get_type_hints(ScorerSettings)
    found = []
    for field in dataclasses.fields(ScorerSettings):
        flag = field.metadata.get("flag")
        if flag is None:
            continue
        default = None if flag.optional else field.default
        arguments: dict[str, Any] = {"help": flag.help.replace("{default}", str(field.default))}
        if hints[field.name] is bool:
            arguments["action"] = "store_true"
        else:
            arguments["default"] = default
            if field.name in SETTING_CHOICES:
                arguments["choices"] = SETTING_CHOICES[field.name]
            else:  # int, float, or Optional[one of them]
                kind = hints[field.name]
                arguments["type"] = next(t for t in get_args(kind) if t is not type(None)) \
                    if get_origin(kind) is not None else kind
        if flag.metavar:
            arguments["metavar"] = flag.metavar
        found.append(SettingFlag(field.name, PREFIX + (flag.name or field.name), arguments))
    return tuple(found)


def parse_schedule(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'5@50,1@500' -> ((5, 1), (50, 500))."""
    try:
        stages = [tuple(int(v) for v in stage.split("@")) for stage in text.split(",")]
        keep, draws = zip(*stages)
    except ValueError:
        raise DiffusionUsageError(f"--diffusion_schedule {text!r}: expected KEEP@DRAWS,... e.g. 5@50,1@500") from None
    return tuple(keep), tuple(draws)


def _schedule_values(text: str, options: argparse.Namespace) -> dict:
    strategy = options.diffusion_strategy
    if strategy not in (None, "schedule"):
        raise DiffusionUsageError(f"--diffusion_schedule is only used by --diffusion_strategy schedule, not "
                                  f"{strategy}; drop one of the two")
    keep, draws = parse_schedule(text)
    return {"schedule_keep": keep, "schedule_draws": draws, "strategy": "schedule"}


def _bucket_weights_from_file(path: str, options: argparse.Namespace) -> dict:
    from ..weighting import read_bucket_weights

    try:
        return {"bucket_weights": read_bucket_weights(path)}
    except (OSError, ValueError) as error:
        raise DiffusionUsageError(f"--diffusion_bucket_weights_file: {error}") from None


def _prefilter_values(model_and_pretrained: str, options: argparse.Namespace) -> dict:
    model, _, pretrained = model_and_pretrained.partition(",")
    return {"prefilter_model": model, "prefilter_pretrained": pretrained, "prefilter_k": options.diffusion_prefilter_k}


#: the flag that picks a whole protocol (first in `--help`)
PROTOCOL_FLAG = OtherFlag(
    "protocol", "a paper's whole protocol, set per dataset ({protocols}; see docs/protocols.md); explicit "
    "--diffusion_* flags override it and the record says so",
    arguments={"type": str, "default": DEFAULT_PROTOCOL, "metavar": "NAME"})

#: flags besides the settings' own; one that sets settings is listed in `--help` where its first setting's is
OTHER_FLAGS: tuple[OtherFlag, ...] = (
    OtherFlag("t_range", "restrict timesteps to [T_MIN, T_MAX]", ("t_min", "t_max"),
              lambda pair, _: {"t_min": pair[0], "t_max": pair[1]},
              {"type": int, "nargs": 2, "metavar": ("T_MIN", "T_MAX"), "default": None}),
    OtherFlag("bucket_weights", "per-bucket weights for --diffusion_objective x0_buckets (equal-width timestep "
              "buckets)", ("bucket_weights",), lambda weights, _: {"bucket_weights": tuple(weights)},
              {"type": float, "nargs": "+", "default": None}),
    OtherFlag("bucket_weights_file", "read the x0_buckets weights from FILE (`python -m "
              "clip_benchmark_diffusion.weighting fit` output)", ("bucket_weights",), _bucket_weights_from_file,
              {"type": str, "default": None, "metavar": "FILE"}),
    OtherFlag("logit_normal", "mean and std of --diffusion_sigma_distribution logit_normal (default 0 1)",
              ("logit_normal_mean", "logit_normal_std"),
              lambda pair, _: {"logit_normal_mean": pair[0], "logit_normal_std": pair[1]},
              {"type": float, "nargs": 2, "metavar": ("MEAN", "STD"), "default": None}),
    OtherFlag("schedule", "multi-stage schedule, e.g. 5@50,1@500 (keep 5 after 50 draws, 1 after 500)",
              ("strategy", "schedule_keep", "schedule_draws"), _schedule_values,
              {"type": str, "default": None, "metavar": "KEEP@DRAWS,..."}),
    OtherFlag("prefilter", "open_clip model that keeps only its top --diffusion_prefilter_k classes per image",
              ("prefilter_model", "prefilter_pretrained", "prefilter_k"), _prefilter_values,
              {"type": str, "default": None, "metavar": "MODEL,PRETRAINED"}),
    OtherFlag("prefilter_k", "classes --diffusion_prefilter keeps per image", ("prefilter_k",),
              arguments={"type": int, "default": 5}),
    # the run's own: where and how it reports, not how it scores
    OtherFlag("records", "per-image record file (default: beside the result JSON, suffix .diffusion.jsonl)",
              arguments={"type": str, "default": None}),
    OtherFlag("no_progress", "no progress bar", arguments={"action": "store_true"}),
    OtherFlag("limit", "quick look: score only the first N images and print the summary line (no result JSON is "
              "written; the record keeps the images, so the full run reuses them); 0 = all images",
              arguments={"type": int, "default": 0, "metavar": "N"}),
    OtherFlag("predictions", "for any model, CLIP included: write X.predictions.jsonl beside a classification "
              "result and add instances / images_per_instance to caption-selection metrics (the report's "
              "intervals and paired tests use them); classification runs of any model and diffusion runs always do",
              arguments={"action": "store_true"}),
)

#: which ScorerSettings fields each `--diffusion_*` flag (argparse dest) sets: explicit flags win over a protocol
FLAG_SETTINGS: dict[str, tuple[str, ...]] = {
    **{flag.dest: (flag.setting,) for flag in setting_flags()},
    **{flag.dest: flag.sets for flag in OTHER_FLAGS if flag.sets}}


def _flags_in_help_order() -> list[tuple[str, dict]]:
    """(flag, add_argument keywords): the protocol, then each setting's flags in field order (a flag
    that sets several settings where its first one is), then the run's own flags."""
    order = {field.name: index for index, field in enumerate(dataclasses.fields(ScorerSettings))}
    setting_entries = [(order[flag.setting], 0, flag.dest, flag.arguments) for flag in setting_flags()]
    setting_entries += [(order[flag.sets[0]], 1 + index, flag.dest, {"help": flag.help, **flag.arguments})
                        for index, flag in enumerate(OTHER_FLAGS) if flag.sets]
    protocol_help = PROTOCOL_FLAG.help.replace("{protocols}", ", ".join(protocol_names()))
    return ([(PROTOCOL_FLAG.dest, {"help": protocol_help, **PROTOCOL_FLAG.arguments})]
            + [(dest, arguments) for *_, dest, arguments in sorted(setting_entries, key=lambda e: e[:2])]
            + [(flag.dest, {"help": flag.help, **flag.arguments}) for flag in OTHER_FLAGS if not flag.sets])


def diffusion_argument_parser() -> argparse.ArgumentParser:
    """The `--diffusion_*` flags (added to clip_benchmark's `eval`)."""
    # allow_abbrev=False: `--diffusion_draw 8` is refused with the full name, not taken as --diffusion_draws
    parser = argparse.ArgumentParser(add_help=False, prog="clip_benchmark eval", allow_abbrev=False)
    group = parser.add_argument_group("diffusion classifier (clip-benchmark-diffusion; used by --model sd-diffusion)")
    for dest, arguments in _flags_in_help_order():
        group.add_argument(f"--{dest}", **arguments)
    return with_defaults(parser)


def default_options() -> argparse.Namespace:
    """Every `--diffusion_*` flag at its default (a run started from Python without flags)."""
    return diffusion_argument_parser().parse_args([])


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
    given = {field for flag in explicit for field in FLAG_SETTINGS.get(flag, ())}
    try:
        name = check_protocol(getattr(options, "diffusion_protocol", None) or DEFAULT_PROTOCOL)
        return resolve(name, dataset, _values_from_options(options, seed), given)
    except ValueError as error:  # ProtocolError, or invalid merged settings
        raise DiffusionUsageError(str(error)) from None


def _values_from_options(options: argparse.Namespace, seed: int) -> dict[str, Any]:
    """ScorerSettings fields from parsed flags (their defaults included)."""
    values: dict[str, Any] = {flag.setting: getattr(options, flag.dest) for flag in setting_flags()}
    values["seed"] = seed
    for flag in OTHER_FLAGS:
        given = getattr(options, flag.dest, None)
        if flag.to_values is not None and given:
            values.update(flag.to_values(given, options))
    if values["strategy"] is None:
        del values["strategy"]
    return values


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
