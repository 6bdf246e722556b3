"""The candidates' conditionings: every prompt encoded once per scorer, and the table on the device.

A candidate is a list of prompts (one class's templates). Each distinct prompt is text-encoded once
and kept on the CPU (the prompt cache); under `templates="average_embeddings"` only each candidate's
mean is kept. The distinct conditionings a call needs stay on the device as one table for every
image of a run while the candidates repeat (clip_benchmark scores every batch against the same
classes) and fit `CONDITIONING_TABLE_BYTES`; the passes gather their rows from it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .backends.base import Conditioning, DiffusionBackend
from .settings import ScorerSettings

#: the candidates' distinct conditionings stay on the device as one table, for every image of a run,
#: when they take at most this much (1000 SD 2 text states: 158 MB; 100 classes x 80 templates:
#: 1.26 GB); otherwise each pass copies its own distinct ones
CONDITIONING_TABLE_BYTES = 2 * 2**30


class CandidateConditionings:
    """The prompt cache of one scorer and the device table of its latest candidates."""

    def __init__(self, backend: DiffusionBackend, settings: ScorerSettings) -> None:
        self.backend, self.settings = backend, settings
        self.prompts: dict[str, Conditioning] = {}  # prompt -> its conditioning row (CPU)
        self.means: dict[tuple, Conditioning] = {}  # a candidate's prompts -> their mean row (average_embeddings)
        #: what each of the latest candidates' distinct conditionings is (a prompt, or ("mean", *prompts))
        self.names: list = []
        #: (device and names, their device table) of the latest candidates, reused while they repeat
        self._table: tuple[list, Optional[Conditioning]] = ([], None)

    def encode_prompts(self, prompts: Sequence[str]) -> None:
        """Text-encode prompts not yet cached (each prompt is encoded once per scorer)."""
        self.prompts.update(self._encode_missing(prompts))

    def _encode_missing(self, prompts: Sequence[str]) -> dict[str, Conditioning]:
        """{prompt: conditioning row} of the prompts not in the prompt cache, `batch_size` per text-encoder call."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.prompts))
        step = max(self.settings.batch_size, 1)
        encoded = {}
        for start in range(0, len(missing), step):
            chunk = missing[start:start + step]
            encoded.update(zip(chunk, self.backend.encode_prompts(chunk).rows()))
        return encoded

    def encode_candidates(self, candidates: Sequence[Sequence[str]]) -> None:
        """Make each candidate's conditioning ready. With `average_embeddings` only each candidate's
        mean is kept, not its prompts' states: 1000 classes x 80 templates of SD 2 states would hold
        ~12 GB of host memory, their 1000 means ~160 MB."""
        if self.settings.templates != "average_embeddings":
            self.encode_prompts([p for c in self.scored_prompts(candidates) for p in c])
            return
        for prompts in candidates:
            key = tuple(prompts)
            if key not in self.means:
                encoded = self._encode_missing(prompts)
                self.means[key] = Conditioning.mean([self.prompts.get(p, encoded.get(p)) for p in prompts])

    def scored_prompts(self, candidates: Sequence[Sequence[str]]) -> Sequence[Sequence[str]]:
        """The prompts each candidate is scored on: only its first under `templates="single"` (the
        integration puts the dataset's canonical prompt first), else all of them."""
        return [list(c[:1]) for c in candidates] if self.settings.templates == "single" else candidates

    def distinct(self, candidates: Sequence[Sequence[str]]) -> tuple[list[Conditioning], list[list[int]]]:
        """The distinct conditionings needed (the cached rows themselves, not a stacked copy:
        1000 classes x 80 templates of SD 2 text states are ~12 GB of host memory in float16)
        and, per candidate, which of them it averages; `names` then says what each is."""
        if any(len(c) == 0 for c in candidates):
            raise ValueError("every candidate needs at least one prompt")
        self.encode_candidates(candidates)
        candidates = self.scored_prompts(candidates)
        if self.settings.templates == "average_embeddings":
            self.names = [("mean",) + tuple(prompts) for prompts in candidates]
            return [self.means[tuple(prompts)] for prompts in candidates], [[i] for i in range(len(candidates))]
        index: dict[str, int] = {}
        groups = [[index.setdefault(p, len(index)) for p in prompts] for prompts in candidates]
        self.names = list(index)
        return [self.prompts[p] for p in index], groups

    def device_table(self, rows: list[Conditioning], device: torch.device) -> Optional[Conditioning]:
        """The latest candidates' conditionings (`rows`, in `distinct` order) on the device, kept while
        the candidates repeat; None when they would take more than `CONDITIONING_TABLE_BYTES`."""
        key = [device] + self.names
        if self._table[0] != key:
            fits = len(rows) * rows[0].nbytes <= CONDITIONING_TABLE_BYTES
            self._table = (key, None)  # the previous table is freed before a new one is built
            # once per run, a plain copy: a pinned staging copy of up to 2 GiB would stay in CUDA's host cache
            self._table = (key, Conditioning.stack(rows).to(device) if fits else None)
        return self._table[1]
