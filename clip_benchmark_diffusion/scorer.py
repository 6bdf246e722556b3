"""Monte-Carlo denoising-error scores of candidate prompts: the classifier itself.

Model-agnostic: it talks to a `DiffusionBackend` and knows nothing of clip_benchmark.
For each image it draws (t, noise) pairs from a seed derived from (seed, image key), so the
same image gets the same draws whatever the batch size, worker count or class order, and
every candidate is scored on those same draws (paired differences). UNet rows from all
images and candidates of a call are packed into batches of `batch_size`.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import torch

from .backends.base import Conditioning, DiffusionBackend
from .devices import to_device
from .draws import draw_noise, draw_timesteps, image_key_from_pixels, mix_seed, timestep_range_problem
from .errors import NonFiniteError, UnsupportedSettings
from .objectives import estimate_of, schedule_errors
from .schedules import NoiseSchedule
from .safety import check_finite, check_table_memory, table_draws
from .settings import ERROR_CACHE_IGNORED_SETTINGS, ScorerSettings
from .strategies import ImageState, make_strategy, within_cap


@dataclass
class ImageScores:
    """Everything the scorer knows about one image's decision."""

    image_key: int
    errors: torch.Tensor  # (candidates,) mean weighted error over the draws each received
    per_draw: torch.Tensor  # (candidates, draws) NaN where a candidate was not evaluated
    timesteps: torch.Tensor  # (draws,)
    draws: torch.Tensor  # (candidates,) number of draws each candidate received
    calls: int  # network evaluations spent on this image
    dropped_round: list  # round at which each candidate was eliminated (None = survived)
    survivors_per_round: list
    #: order of candidates that were never scored (a pre-filter's ranking), lower first
    prior: Optional[list] = None
    #: 1 when the decision took the fewest calls the strategy allows, 0 when it took the most;
    #: Clark & Jaini found the calls an image needs a well-calibrated confidence signal
    confidence: float = 1.0
    #: decided under `max_calls`: the strategy would have spent more
    capped: bool = False

    @property
    def softmax_confidence(self) -> float:
        """softmax(-errors) of the predicted class, as in Li et al.'s code (poorly calibrated:
        errors of different prompts differ little, so this is close to 1 / candidates)."""
        finite = torch.nan_to_num(self.errors, nan=float("inf"))
        return float(torch.softmax(-finite, dim=0)[self.prediction])

    @property
    def ranking(self) -> list[int]:
        """Best first. Survivors by error; eliminated candidates after them, later
        eliminations first, each round's by its estimate when it was dropped."""
        def key(c: int) -> tuple:
            dropped = self.dropped_round[c]
            error = float(self.errors[c])
            if error != error:  # never scored: after every scored candidate, in the prior's order
                return (2, 0, self.prior.index(c) if self.prior else 0, c)
            return (0 if dropped is None else 1, -(dropped or 0), error, c)

        return sorted(range(len(self.errors)), key=key)

    @property
    def prediction(self) -> int:
        return self.ranking[0]


def check_compatible(settings: ScorerSettings, schedule: NoiseSchedule) -> None:
    """Raise UnsupportedSettings for settings this model cannot serve, before any image is read
    (otherwise they would only fail at the first network pass, after a dataset was opened)."""
    problem = timestep_range_problem(settings, schedule.num_train_timesteps)
    if problem:
        raise UnsupportedSettings(problem)


#: the candidates' distinct conditionings stay on the device as one table, for every image of a run,
#: when they take at most this much (1000 SD 2 text states: 158 MB; 100 classes x 80 templates:
#: 1.26 GB); otherwise each pass copies its own distinct ones
CONDITIONING_TABLE_BYTES = 2 * 2**30


class DeviceTable:
    """Distinct rows (conditionings) under sorted integer keys, stacked and copied to the device
    once; the rows of a pass are gathered from it there, so a row shared by many rows of a pass
    costs the host one copy, not one per row."""

    def __init__(self, keys: torch.Tensor, rows: list, device: torch.device) -> None:
        self.keys, self.device = keys, device
        self.table = Conditioning.stack(rows, pin_memory=device.type == "cuda").map(
            lambda values: rows_to_device(values, device))

    def positions(self, keys: torch.Tensor) -> torch.Tensor:
        """Where the rows of `keys` are in the table."""
        return torch.searchsorted(self.keys, keys)


class RowGather:
    """Rows of device tables for one pass, written into buffers reused from pass to pass: a fresh
    multi-megabyte block per pass costs page faults (on one CPU thread, gathering a pass's 64
    SD 2 latents took ~9 us per row into new memory and ~4 into a reused buffer). A buffer is
    overwritten by the next pass, after the device has finished this one's work in stream order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffers: dict[str, tuple[tuple, torch.Tensor]] = {}  # name -> (row shape, dtype, device), buffer

    def __call__(self, name: str, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` (CPU) of `table`: the table itself when `index` is 0, 1, ..., len - 1."""
        return self.fields(name, {"": table}, index)[""]

    def conditioning(self, name: str, table: Conditioning, index: torch.Tensor) -> Conditioning:
        """Rows `index` (CPU) of every field of a conditioning table."""
        return Conditioning(**self.fields(name, table.fields(), index))

    def fields(self, name: str, fields: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows `index` of tables with as many rows each, into this name's buffers."""
        rows = index.shape[0]
        first = next(iter(fields.values()))
        if rows == first.shape[0] and bool((index == torch.arange(rows)).all()):
            return fields
        index = to_device(index, first.device)
        return {field: take_rows(value, index, self.buffer(f"{name}.{field}", value, rows))
                for field, value in fields.items()}

    def buffer(self, name: str, like: torch.Tensor, rows: int) -> torch.Tensor:
        """`rows` rows shaped, typed and placed like `like`'s, reused by the next call of that name."""
        kind = (like.shape[1:], like.dtype, like.device)
        found = self.buffers.get(name)
        if found is None or found[0] != kind or found[1].shape[0] < rows:
            # sized by the rows passes really have (a batch_size far above them allocates nothing more)
            found = self.buffers[name] = (kind, like.new_empty((rows, *kind[0])))
        return found[1][:rows]


def take_rows(values: torch.Tensor, index: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows `index` of `values` (`index_select`: on CPU several times faster than `values[index]`),
    written into `out` (`len(index)` rows) when given, e.g. a buffer reused from pass to pass."""
    return values.index_select(0, index) if out is None else torch.index_select(values, 0, index, out=out)


def rows_to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A pass's rows (its noises, or a field of its conditionings) on `device`. To CUDA they go from
    pinned memory without waiting, so the host prepares the next pass while this copy and the
    previous pass run."""
    return to_device(rows, device)


def as_network_input(x_t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A pass's noised samples (one per draw) in the network's dtype: cast once per draw before
    the rows are gathered, not once per row inside the backend (the same values; in half
    precision the gathered rows are also half the bytes)."""
    return x_t if x_t.dtype == dtype else x_t.to(dtype)


#: passes whose noise the noise thread generates before the scoring thread needs it
NOISE_PREFETCH_PASSES: int = 2
_noise_thread: Optional[ThreadPoolExecutor] = None


def noise_thread() -> ThreadPoolExecutor:
    """The process's one noise thread. The CPU generator's normal samples (~150 us per SD-sized draw,
    kept on the CPU so the draws are the same on every device) are made there, passes ahead, while
    the scoring thread prepares and launches the current pass: torch releases the GIL while it
    samples, so with a spare core the scoring thread never waits for them."""
    global _noise_thread
    if _noise_thread is None:
        _noise_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusion-noise")
    return _noise_thread


class RoundDraws:
    """The distinct (image, draw)s of a round's rows, in row order (rows are image by image, draw
    by draw, so the rows sharing a draw are consecutive), and the noise tables of its passes."""

    def __init__(self, images: torch.Tensor, draws: torch.Tensor, seeds: list, timestep_table: torch.Tensor,
                 sample_shape: tuple, pinned: bool) -> None:
        per_image = timestep_table.shape[1]
        keys, self.of_row = torch.unique_consecutive(images * per_image + draws, return_inverse=True)
        self.images, indices = keys // per_image, keys % per_image
        self.timesteps = timestep_table[self.images, indices]
        self.seeds = [seeds[i] for i in self.images.tolist()]
        self.indices = indices.tolist()
        self.sample_shape, self.pinned = sample_shape, pinned
        self.carried: Optional[tuple[int, torch.Tensor]] = None  # the last draw of the previous pass

    def noise(self, first: int, last: int) -> torch.Tensor:
        """Noises of draws [first, last) as one host table (pinned for CUDA), each generated once
        straight into it; a draw the previous pass began is copied from that pass's table."""
        table = torch.empty((last - first, *self.sample_shape), dtype=torch.float32, pin_memory=self.pinned)
        for k in range(first, last):
            if self.carried is not None and self.carried[0] == k:
                table[k - first].copy_(self.carried[1])
            else:
                draw_noise(self.seeds[k], self.indices[k], self.sample_shape, "cpu", table[k - first])
        self.carried = (last - 1, table[-1])
        return table

    def prefetched(self, ranges: Sequence[tuple[int, int]], ahead: int = NOISE_PREFETCH_PASSES
                   ) -> Iterator[torch.Tensor]:
        """`noise(first, last)` of each range in order, made on the noise thread up to `ahead` passes
        before it is used (one thread, first in first out: `carried` is only touched there)."""
        pending: deque = deque()
        for first, last in ranges:
            pending.append(noise_thread().submit(self.noise, first, last))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class RoundRows(NamedTuple):
    """One image's rows of a round: every conditioning its open candidates need (sorted) at each
    draw in [first_draw, target), draw by draw."""

    conditionings: list
    first_draw: int
    target: int

    @property
    def size(self) -> int:
        return len(self.conditionings) * (self.target - self.first_draw)


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
        self._conditioning_names: list = []
        #: (the conditionings' names, their device table) of the last candidates, reused while they repeat
        self._table: tuple[list, Optional[Conditioning]] = ([], None)
        self._gather = RowGather(self.settings.batch_size)  # a pass's row buffers, reused by the next
        self._prompt_cache: dict[str, Conditioning] = {}  # prompt -> its conditioning row (CPU)
        self._mean_cache: dict[tuple, Conditioning] = {}

    # ---------------------------------------------------------------- conditionings
    def encode_prompts(self, prompts: Sequence[str]) -> None:
        """Text-encode prompts not yet cached (each prompt is encoded once per scorer)."""
        self._prompt_cache.update(self._encode_missing(prompts))

    def _encode_missing(self, prompts: Sequence[str]) -> dict:
        """{prompt: conditioning row} of the prompts not in the prompt cache, `batch_size` per text-encoder call."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
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
            self.encode_prompts([p for c in self._scored_prompts(candidates) for p in c])
            return
        for prompts in candidates:
            key = tuple(prompts)
            if key not in self._mean_cache:
                encoded = self._encode_missing(prompts)
                self._mean_cache[key] = Conditioning.mean([self._prompt_cache.get(p, encoded.get(p)) for p in prompts])

    def _scored_prompts(self, candidates: Sequence[Sequence[str]]) -> Sequence[Sequence[str]]:
        """The prompts each candidate is scored on: only its first under `templates="single"` (the
        integration puts the dataset's canonical prompt first), else all of them."""
        return [list(c[:1]) for c in candidates] if self.settings.templates == "single" else candidates

    def _conditionings(self, candidates: Sequence[Sequence[str]]) -> tuple[list, list[list[int]]]:
        """The distinct conditionings needed (the cached rows themselves, not a stacked copy:
        1000 classes x 80 templates of SD 2 text states are ~12 GB of host memory in float16)
        and, per candidate, which of them it averages."""
        if any(len(c) == 0 for c in candidates):
            raise ValueError("every candidate needs at least one prompt")
        self.encode_candidates(candidates)
        candidates = self._scored_prompts(candidates)
        if self.settings.templates == "average_embeddings":
            tensors = [self._mean_cache[tuple(prompts)] for prompts in candidates]
            self._conditioning_names = [("mean",) + tuple(prompts) for prompts in candidates]
            return tensors, [[i] for i in range(len(candidates))]
        index: dict[str, int] = {}
        groups = [[index.setdefault(p, len(index)) for p in prompts] for prompts in candidates]
        self._conditioning_names = list(index)
        return [self._prompt_cache[p] for p in index], groups

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
            conditionings, groups = self._conditionings(candidates)
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
                results[i] = self._result(image_keys[i], states[i], all_timesteps[i], calls[i], bounds)
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
                for i, image_errors in self._evaluate(blocks, x0, conditionings, seeds, all_timesteps, on_calls):
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

    def prepare(self, candidates: Sequence[Sequence[str]]) -> None:
        """Encode the candidates and put their conditionings on the device: what every image of a
        run shares, done once before the first (`score` does it when it was not done)."""
        self._candidate_table(self._conditionings(candidates)[0], self.backend.device)

    def _candidate_table(self, conditionings: list, device: torch.device) -> Optional[Conditioning]:
        """Every candidate's conditioning on the device, in `_conditionings` order, kept while the
        candidates repeat (clip_benchmark scores every batch against the same classes); None when
        they would take more than `CONDITIONING_TABLE_BYTES`."""
        key = [device] + self._conditioning_names
        if self._table[0] != key:
            fits = len(conditionings) * conditionings[0].nbytes <= CONDITIONING_TABLE_BYTES
            self._table = (key, None)  # the previous table is freed before a new one is built
            # once per run, a plain copy: a pinned staging copy of up to 2 GiB would stay in CUDA's host cache
            self._table = (key, Conditioning.stack(conditionings).to(device) if fits else None)
        return self._table[1]

    def _evaluate(self, blocks: dict[int, RoundRows], x0: torch.Tensor, conditionings: list, seeds: list,
                  all_timesteps: list, on_calls: Optional[Callable[[int], None]]
                  ) -> Iterator[tuple[int, torch.Tensor]]:
        """Errors (float64, CPU) of the round's rows of each image, `batch_size` rows per network
        call, yielded as (image, errors in `RoundRows` order) as soon as all its rows are done.

        Host work per pass does not grow with its rows: the candidates' conditionings are one device
        table for the run when they fit `CONDITIONING_TABLE_BYTES` (else each pass copies its distinct
        ones) and rows are gathered there; each (image, draw) noise is generated once per round
        and kept only while consecutive passes use it; each distinct (image, draw) of a pass is
        noised once on the device and its rows gathered; errors stay on the device until a pass
        completes an image (whose result must then reach `on_image`), so the host does not wait
        for the device after every pass."""
        backend, device = self.backend, x0.device
        columns = _round_columns(blocks)  # (image, draw, conditioning) of every row, image by image
        errors = torch.empty(columns.shape[1], dtype=torch.float64)
        todo = torch.arange(columns.shape[1])
        cache_keys = None
        if self.error_cache is not None:
            cache_keys = [(seeds[i], j, self._conditioning_names[g]) for i, j, g in columns.T.tolist()]
            cached = torch.tensor([key in self.error_cache for key in cache_keys], dtype=torch.bool)
            errors[cached] = torch.tensor([self.error_cache[key] for key, hit in zip(cache_keys, cached.tolist())
                                           if hit], dtype=torch.float64)
            todo = todo[~cached]
        ends = torch.tensor([block.size for block in blocks.values()]).cumsum(0).tolist()
        extent = {i: (end - block.size, end) for (i, block), end in zip(blocks.items(), ends)}

        def finished(i: int) -> tuple[int, torch.Tensor]:
            return i, errors[extent[i][0]:extent[i][1]]

        # the pass that evaluates an image's last row to do completes the image
        pending, counts = torch.unique_consecutive(columns[0, todo], return_counts=True)
        completing = list(zip((counts.cumsum(0) - 1).tolist(), pending.tolist()))
        evaluated = set(pending.tolist())
        yield from (finished(i) for i in blocks if i not in evaluated)
        columns = columns[:, todo]
        round_draws = RoundDraws(columns[0], columns[1], seeds, torch.stack(all_timesteps), tuple(x0.shape[1:]),
                                 pinned=device.type == "cuda")
        draw_images = to_device(round_draws.images, device)
        clean_needed = estimate_of(self.settings.objective) != "epsilon"
        table = self._candidate_table(conditionings, device)
        gather = self._gather
        network_dtype = getattr(backend, "dtype", None) or x0.dtype
        device_errors: Optional[torch.Tensor] = None
        synced = 0  # rows of `todo` whose errors are on the host
        starts = list(range(0, len(todo), self.settings.batch_size))
        stops = [min(start + self.settings.batch_size, len(todo)) for start in starts]
        # each pass's distinct (image, draw)s: [first, last) of the round's
        firsts = round_draws.of_row[starts].tolist()
        lasts = (round_draws.of_row[[stop - 1 for stop in stops]] + 1).tolist()
        noises = round_draws.prefetched(list(zip(firsts, lasts)))
        for start, stop, first, last, host_noise in zip(starts, stops, firsts, lasts, noises):
            groups = columns[2, start:stop]
            # one noise, clean sample and x_t per distinct (image, draw) of the pass, on the device;
            # rows index them
            rows = round_draws.of_row[start:stop] - first
            noise = rows_to_device(host_noise, device)
            clean = take_rows(x0, draw_images[first:last])
            draw_timesteps_ = round_draws.timesteps[first:last]
            x_t = self.schedule.add_noise(clean, noise, draw_timesteps_)
            network_input = gather("x_t", as_network_input(x_t, network_dtype), rows)
            timesteps = draw_timesteps_[rows]
            if table is not None:
                conditioning = gather.conditioning("conditioning", table, groups)
            else:
                pass_table = self._conditioning_table(conditionings, groups, device)
                conditioning = gather.conditioning("conditioning", pass_table.table, pass_table.positions(groups))
            output = backend.predict(network_input, to_device(self.schedule.network_time(timesteps), device),
                                     conditioning)
            chunk_errors = schedule_errors(self.schedule, self.settings, output, clean if clean_needed else None,
                                           noise, x_t, timesteps, gather.buffer("scratch", noise, len(rows)), rows)
            if device_errors is None:
                device_errors = chunk_errors.new_empty(len(todo))
            device_errors[start:stop] = chunk_errors
            if on_calls is not None:
                on_calls((stop - start) * backend.calls_per_prediction)
            if not completing or completing[0][0] >= stop:
                continue
            positions = todo[synced:stop]
            host_errors = device_errors[synced:stop].to("cpu", torch.float64)
            errors[positions] = host_errors
            if cache_keys is not None:
                self.error_cache.update((cache_keys[n], e) for n, e in zip(positions.tolist(), host_errors.tolist()))
            synced = stop
            while completing and completing[0][0] < stop:
                yield finished(completing.pop(0)[1])

    @staticmethod
    def _conditioning_table(conditionings: list, groups: torch.Tensor, device: torch.device) -> DeviceTable:
        distinct = torch.unique(groups)
        return DeviceTable(distinct, [conditionings[g] for g in distinct.tolist()], device)

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

    @staticmethod
    def _result(key: int, state: ImageState, timesteps: torch.Tensor, calls: int,
                bounds: tuple[int, int]) -> ImageScores:
        return image_scores(key, state, timesteps, calls, bounds)


def image_scores(key: int, state: ImageState, timesteps: torch.Tensor, calls: int,
                 bounds: tuple[int, int]) -> ImageScores:
    """An image's decided state as its scores; `bounds` (fewest, most) calls the strategy could have
    spent give the calls-based confidence."""
    n = state.draws_done
    per_draw = state.per_draw[:, :n]
    fewest, most = bounds
    confidence = 1.0 if most <= fewest else min(max((most - calls) / (most - fewest), 0.0), 1.0)
    return ImageScores(
        image_key=int(key), errors=torch.nanmean(per_draw, dim=1), per_draw=per_draw,
        timesteps=timesteps[:n], draws=(~torch.isnan(per_draw)).sum(dim=1), calls=calls,
        dropped_round=list(state.dropped_round), survivors_per_round=list(state.survivors_per_round),
        confidence=confidence, capped=state.capped)


def _round_columns(blocks: dict[int, RoundRows]) -> torch.Tensor:
    """(3, rows) int64: image, draw and conditioning of every row of a round, image by image and,
    within an image, draw by draw (so rows sharing a noise are consecutive)."""
    columns = [torch.zeros(3, 0, dtype=torch.int64)]
    for i, block in blocks.items():
        needed = torch.tensor(block.conditionings, dtype=torch.int64)
        draws = torch.arange(block.first_draw, block.target)
        columns.append(torch.stack([torch.full((block.size,), i, dtype=torch.int64),
                                    draws.repeat_interleave(len(needed)), needed.repeat(len(draws))]))
    return torch.cat(columns, dim=1)


def _open_conditionings(state: ImageState, groups: list) -> list[int]:
    """The conditionings the image's active candidates average (each scored once per draw)."""
    return sorted({g for c in torch.nonzero(state.active).flatten().tolist() for g in groups[c]})
