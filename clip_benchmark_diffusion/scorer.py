"""Monte-Carlo denoising-error scores of candidate prompts: the classifier itself.

Model-agnostic: it talks to a `DiffusionBackend` and knows nothing of clip_benchmark.
For each image it draws (t, noise) pairs from a seed derived from (seed, image key), so the
same image gets the same draws whatever the batch size, worker count or class order, and
every candidate is scored on those same draws (paired differences). UNet rows from all
images and candidates of a call are packed into batches of `batch_size`.

This module is the round loop: each round asks the strategy how many draws each image's open
candidates should have, has `passes.RoundPasses` evaluate those rows, and records the errors.
`conditionings` keeps the prompt cache and the candidates' device table; `decisions` holds the
resulting `ImageScores` (re-exported here).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .backends.base import DiffusionBackend
from .conditionings import CandidateConditionings
from .decisions import ImageScores, image_scores
from .draws import draw_timesteps, image_key_from_pixels, mix_seed, timestep_range_problem
from .errors import NonFiniteError, UnsupportedSettings
from .passes import RoundPasses, RoundRows
from .schedules import NoiseSchedule
from .safety import check_finite, check_table_memory, table_draws
from .settings import ERROR_CACHE_IGNORED_SETTINGS, ScorerSettings
from .strategies import ImageState, make_strategy, within_cap


def check_compatible(settings: ScorerSettings, schedule: NoiseSchedule) -> None:
    """Raise UnsupportedSettings for settings this model cannot serve, before any image is read
    (otherwise they would only fail at the first network pass, after a dataset was opened)."""
    problem = timestep_range_problem(settings, schedule.num_train_timesteps)
    if problem:
        raise UnsupportedSettings(problem)


class DiffusionScorer:
    """Scores candidates (each a list of prompts, e.g. one class's templates) for images."""

    def __init__(self, backend: DiffusionBackend, settings: Optional[ScorerSettings] = None,
                 error_cache: Optional[dict] = None) -> None:
        """`error_cache` (optional, a dict shared between scorers that differ only in their
        strategy) memoises the error of each (image, draw, prompt): benchmarks compare
        strategies on identical draws without recomputing them."""
        self.backend = backend
        self.settings = settings or ScorerSettings()
        #: the model's noise process as these settings draw on it: noising and errors go through it
        self.schedule = backend.noise_process.for_settings(self.settings)
        check_compatible(self.settings, self.schedule)
        self.error_cache = error_cache
        if error_cache is not None:
            fingerprint = {k: v for k, v in self.settings.to_dict().items() if k not in ERROR_CACHE_IGNORED_SETTINGS}
            if error_cache.setdefault("__settings__", fingerprint) != fingerprint:
                raise ValueError("an error cache may only be shared by scorers whose settings differ only in settings "
                                 f"that do not change an error: {sorted(ERROR_CACHE_IGNORED_SETTINGS)}")
        #: the prompt cache and the candidates' device table
        self.conditionings = CandidateConditionings(backend, self.settings)
        self._passes = RoundPasses(backend, self.schedule, self.settings, error_cache)

    # ---------------------------------------------------------------- conditionings
    def encode_prompts(self, prompts: Sequence[str]) -> None:
        """Text-encode prompts not yet cached (each prompt is encoded once per scorer)."""
        self.conditionings.encode_prompts(prompts)

    def encode_candidates(self, candidates: Sequence[Sequence[str]]) -> None:
        """Make each candidate's conditioning ready (see `CandidateConditionings.encode_candidates`)."""
        self.conditionings.encode_candidates(candidates)

    def prepare(self, candidates: Sequence[Sequence[str]]) -> None:
        """Encode the candidates and put their conditionings on the device: what every image of a
        run shares, done once before the first (`score` does it when it was not done)."""
        self.conditionings.device_table(self.conditionings.distinct(candidates)[0], self.backend.device)

    # ---------------------------------------------------------------- scoring
    def image_seed(self, image_key: int) -> int:
        return mix_seed(self.settings.seed, image_key)

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, candidates: Sequence[Sequence[str]],
              image_keys: Optional[Sequence[int]] = None,
              on_calls: Optional[Callable[[int], None]] = None,
              prior_orders: Optional[Sequence[Sequence[int]]] = None, shortlist_size: int = 0,
              on_image: Optional[Callable[[int, ImageScores], None]] = None) -> list[ImageScores]:
        """Score every candidate for each image of a pixel batch (from the backend's transform).

        `image_keys` seed each image's draws (default: a hash of the pixels). `on_calls`
        is told about network evaluations as they happen (for progress bars). `prior_orders`
        (optional, per image, every candidate best first, e.g. by a CLIP model) with
        `shortlist_size` k restricts scoring to each image's first k; the others are ranked
        after them in the prior's order. `on_image(i, scores)` is called the moment image i's
        decision is made (rows are evaluated image by image, and adaptive strategies finish
        images at different rounds), so a caller can save it before the batch is done.
        """
        if len(candidates) == 0:
            raise ValueError("no candidates to score")
        if image_keys is None:
            image_keys = [image_key_from_pixels(p) for p in pixels]
        if len(image_keys) != len(pixels):
            raise ValueError("one image key per image is needed")
        with torch.autocast(device_type=self.backend.device.type, enabled=False):
            x0 = self.backend.encode_images(pixels)
            conditionings, groups = self.conditionings.distinct(candidates)
            strategy = make_strategy(self.settings)
            # sized by what the cap can pay for, not by draws; checked against the memory limit first
            max_draws = table_draws(strategy.max_draws(), self.settings.max_calls, self.backend.calls_per_prediction)
            check_table_memory(len(image_keys), len(candidates), max_draws)
            states = [ImageState(len(candidates), max_draws) for _ in image_keys]
            if prior_orders is not None and shortlist_size > 0:
                for state, order in zip(states, prior_orders):
                    state.restrict(list(order)[:shortlist_size])
            seeds = [self.image_seed(k) for k in image_keys]
            all_timesteps = [draw_timesteps(self.settings, self.schedule.num_train_timesteps,
                                            torch.arange(max_draws), s) for s in seeds]
            calls = [0] * len(states)
            rows_per_draw = [sum(len(groups[c]) for c in torch.nonzero(state.active).flatten().tolist())
                             * self.backend.calls_per_prediction for state in states]
            results: list[Optional[ImageScores]] = [None] * len(states)
            first_round = 0

            def decide(i: int) -> None:
                bounds = (rows_per_draw[i] * first_round, rows_per_draw[i] * max_draws)
                results[i] = image_scores(image_keys[i], states[i], all_timesteps[i], calls[i], bounds)
                if prior_orders is not None:
                    results[i].prior = list(prior_orders[i])
                if on_image is not None:
                    on_image(i, results[i])

            if self.settings.max_calls and max(rows_per_draw) > self.settings.max_calls:
                raise UnsupportedSettings(f"max_calls={self.settings.max_calls} cannot pay for one draw of every "
                                          f"candidate ({max(rows_per_draw)} network calls)")
            upcoming: dict[int, int] = {}  # image -> the draw count its next round brings it to

            def plan(i: int) -> None:
                """Ask the strategy (within the cap) for image i's next round, or decide it now."""
                target = self._within_cap(states[i], groups, strategy.next_round(states[i]), calls[i])
                if target is None:
                    decide(i)
                else:
                    upcoming[i] = target

            for i in range(len(states)):
                plan(i)
            while upcoming:
                plans, upcoming = upcoming, {}
                first_round = first_round or max(plans.values())
                blocks = {i: RoundRows(_open_conditionings(states[i], groups), states[i].draws_done, target)
                          for i, target in plans.items()}
                for i, image_errors in self._passes.evaluate(blocks, x0, conditionings, self.conditionings, seeds,
                                                             all_timesteps, on_calls):
                    self._check_finite(image_errors, i, image_keys[i], blocks[i], groups, candidates)
                    self._record_round(states[i], groups, blocks[i], image_errors)
                    calls[i] += blocks[i].size * self.backend.calls_per_prediction
                    strategy.finish_round(states[i])
                    plan(i)
        return results

    def _check_finite(self, errors: torch.Tensor, position: int, key: int, block: "RoundRows", groups: list,
                      candidates: Sequence[Sequence[str]]) -> None:
        """A NaN or infinite error is never a score (an overflowing half-precision network, NaN weights):
        stop, naming the image, candidate and dtype (`safety.check_finite`)."""
        def candidate(row: int) -> str:
            conditioning = block.conditionings[row % len(block.conditionings)]
            return next(c[0] for c, members in zip(candidates, groups) if conditioning in members)

        try:
            check_finite(errors, f"image key {key:016x}", candidate, getattr(self.backend, "dtype", None))
        except NonFiniteError as error:
            error.position = position
            raise

    def _within_cap(self, state: ImageState, groups: list, target: Optional[int], calls: int) -> Optional[int]:
        """The strategy's next draw target, cut to what `max_calls` still pays for (None: decide now)."""
        per_draw = len(_open_conditionings(state, groups)) * self.backend.calls_per_prediction
        return within_cap(state, target, per_draw, calls, self.settings.max_calls)

    @staticmethod
    def _record_round(state: ImageState, groups: list, block: RoundRows, errors: torch.Tensor) -> None:
        """Each open candidate's error at each draw of the round: the mean over the conditionings it
        averages, summed one template at a time in float64 as `sum(...) / len(...)` would (the
        same bits), for all candidates and draws at once."""
        active = torch.nonzero(state.active).flatten()
        position = {g: k for k, g in enumerate(block.conditionings)}
        members = [[position[g] for g in groups[c]] for c in active.tolist()]
        width = max((len(m) for m in members), default=0)
        zero = len(block.conditionings)  # a column of zeros pads candidates with fewer templates
        state.advance(block.target)
        if not members:
            return
        index = torch.tensor([m + [zero] * (width - len(m)) for m in members], dtype=torch.int64)
        per_draw = torch.cat([errors.view(block.target - block.first_draw, zero),
                              torch.zeros(block.target - block.first_draw, 1, dtype=torch.float64)], dim=1)
        total = per_draw[:, index[:, 0]]
        for k in range(1, width):
            total = total + per_draw[:, index[:, k]]
        sizes = torch.tensor([len(m) for m in members], dtype=torch.float64)
        state.per_draw[active, block.first_draw:block.target] = (total / sizes).T


def _open_conditionings(state: ImageState, groups: list) -> list[int]:
    """The conditionings the image's active candidates average (each scored once per draw)."""
    return sorted({g for c in torch.nonzero(state.active).flatten().tolist() for g in groups[c]})


__all__ = ["DiffusionScorer", "ImageScores", "image_scores", "check_compatible"]
