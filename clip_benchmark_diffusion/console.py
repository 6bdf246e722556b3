"""What a diffusion run says on the console: little, and all of it actionable.

* third-party output the user cannot act on (webdataset's shardshuffle warning, torch's
  worker-count warning, weight-loading bars, clip_benchmark's own per-batch bars that sit
  still for a whole batch) is kept quiet during a diffusion run; the plugin's own bar advances
  per image instead;
* every run ends with one summary line (`summary_line`);
* Ctrl-C ends with one line (`interrupted_line`) and exit code 130;
* mistakes are one line: a model name close to the plugin's (`model_suggestion`), an
  abbreviated `--diffusion_*` flag (`abbreviated_flag_error`).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import sys
import warnings
from typing import Iterator, Optional, Sequence

from .errors import say  # noqa: F401 (re-exported: its old home)

#: exit code of a run ended by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED_EXIT_CODE = 130

#: (message regex, category) of warnings nobody running an eval can act on
QUIET_WARNINGS = (
    (r".*shardshuffle.*", UserWarning),  # webdataset: clip_benchmark builds the dataset, not the user
    (r"This DataLoader will create \d+ worker processes.*", UserWarning),  # torch, about --num_workers
    (r".*upcast_vae.*", FutureWarning),
    (r".*torch_dtype.* is deprecated.*", FutureWarning),
)


@contextlib.contextmanager
def quiet_third_party_output(metric_modules: Sequence = ()) -> Iterator[None]:
    """Within the block: known third-party warnings filtered, weight-loading bars off, and the
    `tqdm` of clip_benchmark's metric modules (per-batch bars, frozen for a whole batch of
    diffusion scoring) disabled; everything restored afterwards."""
    restore = []
    with warnings.catch_warnings():
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for name in ("transformers.utils.logging", "diffusers.utils.logging"):
            module = sys.modules.get(name)
            if module is None:
                try:
                    module = __import__(name, fromlist=["_"])
                except Exception:
                    continue
            enabled = getattr(module, "is_progress_bar_enabled", lambda: True)()
            if enabled and hasattr(module, "disable_progress_bar"):
                module.disable_progress_bar()
                restore.append(module.enable_progress_bar)
        for module in metric_modules:
            original = getattr(module, "tqdm", None)
            if original is not None:
                module.tqdm = _silent(original)
                restore.append(lambda module=module, original=original: setattr(module, "tqdm", original))
        try:
            yield
        finally:
            for undo in reversed(restore):
                undo()


def _silent(tqdm_class):
    def silent(*args, **kwargs):
        kwargs["disable"] = True
        return tqdm_class(*args, **kwargs)

    return silent


def _interval(correct: int, n: int) -> str:
    from .report.stats import wilson_interval

    low, high = wilson_interval(correct, n)
    return f"[{100 * low:.1f}-{100 * high:.1f}]" if not math.isnan(low) else ""


def summary_line(metric: str, correct: int, n: int, calls: int, scored: int, reused: int, seconds: float,
                 where: Optional[str]) -> str:
    """'acc1 83.3% [55.2-95.3] on 6 images (6 scored, 0 reused), 72 UNet calls (12.0 per scored image),
    4.1 s; result: out.json'."""
    accuracy = correct / n if n else math.nan
    text = f"{metric} {100 * accuracy:.1f}% {_interval(correct, n)} (95% interval) on {n} images"
    text += f" ({scored} scored now, {reused} reused)" if reused else ""
    text += f", {calls:,} network calls" + (f" ({calls / scored:.1f} per scored image)" if scored else "")
    text += f", {seconds:.1f} s"
    return text + (f"; {where}" if where else "")


def interrupted_line(saved: int, scored_now: int, record: Optional[str]) -> str:
    if not record:
        return "interrupted (Ctrl-C); no per-image record is kept for this run"
    if not saved:
        return "interrupted (Ctrl-C) before any image was scored; rerunning the same command starts over"
    return (f"interrupted (Ctrl-C): {saved} images are saved in {record} ({scored_now} scored in this run); "
            "rerun the same command to resume from them")


# --------------------------------------------------------------------------- mistakes
def model_suggestion(name: str, diffusion_names: Sequence[str]) -> Optional[str]:
    """The diffusion model name `name` was probably meant to be, or None (exact names, names of
    open_clip models and hub/local references are never questioned)."""
    if name in diffusion_names or ":" in name or "/" in name:
        return None
    close = difflib.get_close_matches(name.lower(), list(diffusion_names), n=1, cutoff=0.75)
    if not close:
        return None
    try:
        import open_clip

        if name in open_clip.list_models():
            return None
    except Exception:
        pass
    return close[0]


def abbreviated_flag_error(arguments: Sequence[str], parser: argparse.ArgumentParser,
                           prefix: str = "--diffusion_") -> Optional[str]:
    """One line for the first `--diffusion_*` argument that is not a flag of `parser` (an
    abbreviation, a typo), naming the flag(s) it resembles; None if all are exact."""
    flags = [option for action in parser._actions for option in action.option_strings if option.startswith(prefix)]
    for argument in arguments:
        if argument == "--":
            break
        flag = argument.split("=", 1)[0]
        if not flag.startswith(prefix) or flag in flags:
            continue
        starting = [f for f in flags if f.startswith(flag)]
        close = starting or difflib.get_close_matches(flag, flags, n=1, cutoff=0.7)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; see `clip_benchmark eval --help`"
        kind = "is not a flag (flags are not abbreviated)" if starting else "is not a flag"
        return f"{flag} {kind}{hint}"
    return None


# --------------------------------------------------------------------------- help
def with_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add '(default: X)' to every help line that does not mention its default yet."""
    for action in parser._actions:
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        if "default" in action.help or action.default in (None, False, argparse.SUPPRESS):
            continue
        value = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        action.help = f"{action.help} (default: {str(value).replace('%', '%%')})"
    return parser


def group_help(parser: argparse.ArgumentParser) -> str:
    """The argument groups of `parser` that hold flags, without a usage line: for appending to
    clip_benchmark's own `eval --help`."""
    formatter = parser._get_formatter()
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.help != argparse.SUPPRESS]
        if not actions:
            continue
        formatter.start_section(group.title)
        formatter.add_text(group.description)
        formatter.add_arguments(actions)
        formatter.end_section()
    return formatter.format_help()


def flags_table(parser: argparse.ArgumentParser) -> str:
    """The `--diffusion_*` flags as a markdown table (flag, default, what it does), from the parser's
    own declarations (`integration.flags.diffusion_argument_parser()`): the README's flags table is this text,
    and a test keeps the two equal."""
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flag = action.option_strings[0]
        if action.metavar:
            metavar = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
            flag += f" {metavar}"
        elif action.nargs != 0:
            flag += " " + (action.dest.replace("diffusion_", "").upper() if not action.choices else
                           "{" + ",".join(map(str, action.choices)) + "}")
        default = action.default
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        shown = "" if default in (None, False) else f"`{default}`"
        text = (action.help or "").replace("%%", "%")
        if default not in (None, False) and text.endswith(f" (default: {default})"):  # the column says it
            text = text[: -len(f" (default: {default})")]
        text = text.replace("|", "\\|")
        rows.append(f"| `{flag}` | {shown} | {text} |")
    return "\n".join(rows)
