"""A round's rows as network passes: packing, noise, gathering and errors.

A round of the scorer asks, for each image, every open conditioning at each draw in a range
(`RoundRows`). `RoundPasses.evaluate` lays those rows out image by image and draw by draw, cuts
them into passes of `batch_size` rows, and per pass: the distinct (image, draw) noises (made ahead
on the noise thread, `RoundDraws`), one noised sample per draw, the rows gathered on the device into
reused buffers (`RowGather`), one network call, and the errors. Nothing here decides anything: the
scorer's round loop and its strategy do.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import torch

from .backends.base import Conditioning, DiffusionBackend
from .conditionings import CandidateConditionings
from .devices import to_device
from .draws import draw_noise
from .objectives import estimate_of, schedule_errors
from .schedules import NoiseSchedule
from .settings import ScorerSettings


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


class DeviceTable:
    """Distinct rows (conditionings) under sorted integer keys, stacked and copied to the device
    once; the rows of a pass are gathered from it there, so a row shared by many rows of a pass
    costs the host one copy, not one per row."""

    def __init__(self, keys: torch.Tensor, rows: list, device: torch.device) -> None:
        self.keys, self.device = keys, device
        self.table = Conditioning.stack(rows, pin_memory=device.type == "cuda").map(
            lambda values: rows_to_device(values, device))

    @classmethod
    def for_pass(cls, conditionings: list[Conditioning], groups: torch.Tensor, device: torch.device) -> "DeviceTable":
        """The distinct conditionings of one pass's rows (`groups` index `conditionings`)."""
        distinct = torch.unique(groups)
        return cls(distinct, [conditionings[g] for g in distinct.tolist()], device)

    def positions(self, keys: torch.Tensor) -> torch.Tensor:
        """Where the rows of `keys` are in the table."""
        return torch.searchsorted(self.keys, keys)


class RoundPasses:
    """Runs rounds' rows through one backend's network, `batch_size` rows per pass, memoising errors in
    the scorer's error cache when it has one."""

    def __init__(self, backend: DiffusionBackend, schedule: NoiseSchedule, settings: ScorerSettings,
                 error_cache: Optional[dict]) -> None:
        self.backend, self.schedule, self.settings, self.error_cache = backend, schedule, settings, error_cache
        self.gather = RowGather(settings.batch_size)  # a pass's row buffers, reused by the next

    def evaluate(self, blocks: dict[int, RoundRows], x0: torch.Tensor, conditionings: list[Conditioning],
                 candidates: CandidateConditionings, seeds: list, all_timesteps: list,
                 on_calls: Optional[Callable[[int], None]]) -> Iterator[tuple[int, torch.Tensor]]:
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
            cache_keys = [(seeds[i], j, candidates.names[g]) for i, j, g in columns.T.tolist()]
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
        table = candidates.device_table(conditionings, device)
        gather = self.gather
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
                pass_table = DeviceTable.for_pass(conditionings, groups, device)
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
