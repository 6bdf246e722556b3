"""Every error kind of the plugin, and the one voice of its warnings and one-line errors.

The lowest module of the package (it imports nothing of it): any layer may raise these, and the
command line catches `DiffusionClassifierError` alone to print one line and exit 2. Each kind
keeps the built-in base it always had (`ValueError` or `RuntimeError`), so code that caught
those still does. The old homes (`checkpoints.CheckpointError`, `settings.UnsupportedSettings`,
`records.RecordError`, ...) re-export them.
"""
from __future__ import annotations

import sys

#: how every message of the plugin starts on stderr
PREFIX = "clip_benchmark_diffusion"


class DiffusionClassifierError(Exception):
    """Base of the plugin's errors: the message is one line for the user, naming what is wrong and
    what to do."""


# ------------------------------------------------------------------------------ before the model loads
class DiffusionUsageError(DiffusionClassifierError, RuntimeError):
    """A clip_benchmark option combination a diffusion model cannot serve."""


class UnsupportedSettings(DiffusionClassifierError, ValueError):
    """Settings that are valid on their own but that this model cannot serve (e.g. a
    timestep range beyond its schedule); raised before any data is read."""


class ProtocolError(DiffusionClassifierError, ValueError):
    """An unknown protocol name (one line listing the known ones)."""


class ResourceLimit(DiffusionClassifierError, ValueError):
    """Settings that would allocate more than a limit; the message gives the estimate and the limit."""


class CheckpointError(DiffusionClassifierError, RuntimeError):
    """A checkpoint could not be found or is not a supported pipeline; the message says
    what was looked for and how to provide it."""


class UnsupportedPromptError(CheckpointError):
    """The checkpoint cannot score these prompts (a class-conditional model given free text)."""


class DatasetError(DiffusionClassifierError, ValueError):
    """A dataset that cannot be read (or written); the message is one line for the user."""


class HostChanged(DiffusionClassifierError, RuntimeError):
    """clip_benchmark (or open_clip) no longer has what the plugin expects."""


# ------------------------------------------------------------------------------ while a run scores
class NonFiniteError(DiffusionClassifierError, RuntimeError):
    """The network gave a NaN or infinite error: never a score. The message names the image,
    the candidate, the dtype and what to try."""


class RecordError(DiffusionClassifierError, RuntimeError):
    """A record file cannot be used as it is (held by another run, or unreadable); the
    message names the file and what to do."""


class ShardError(DiffusionClassifierError, RuntimeError):
    """Ranks of one job that cannot work together (other settings, weights or output, or a rank that
    never arrives); the message names the rank."""


# ------------------------------------------------------------------------------ offline tools
class MissingErrors(DiffusionClassifierError, ValueError):
    """The strategy asked for an error the table does not have (the run never evaluated it)."""


# ------------------------------------------------------------------------------ messages
def say(message: str) -> None:
    """One line of news on stderr (a resumed record, a cost preview, a summary)."""
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """One line on stderr, in the form every plugin warning takes."""
    print(f"{PREFIX}: warning: {message}", file=sys.stderr)


def error_line(message: object) -> str:
    """The one line an error ends a command with."""
    return f"{PREFIX}: error: {message}"


__all__ = [
    "DiffusionClassifierError", "DiffusionUsageError", "UnsupportedSettings", "ProtocolError", "ResourceLimit",
    "CheckpointError", "UnsupportedPromptError", "DatasetError", "HostChanged", "NonFiniteError", "RecordError",
    "ShardError", "MissingErrors", "say", "warn", "error_line",
]
