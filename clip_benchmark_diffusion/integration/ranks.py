"""One dataset across many processes: images are handed out dynamically through the c10d store.

Under `torchrun` (or Slurm's `srun` with MASTER_ADDR/MASTER_PORT set) every rank runs the same
clip_benchmark evaluation and walks the same images. Before scoring an image a rank claims it
with an atomic `store.add`; the first claimant scores it, the others skip it. A rank that draws
cheap images (adaptive pruning makes cost vary 10x) therefore simply claims more of them: no
static split. Each rank appends to its own record (`X.diffusion.rank<R>.jsonl`, rank 0 to
`X.diffusion.jsonl`); when every rank is done, rank 0 merges the others' images into its record
and clip_benchmark's metric code runs once more over the dataset on rank 0, now with every image
from the record, so the result JSON is computed and written exactly once, by clip_benchmark.
Resuming works across world sizes because every rank reads every rank's record before claiming.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from ..errors import ShardError  # noqa: F401 (re-exported: its old home)
from ..records import record_stem

#: how long rank 0 waits for the slowest rank (a dead rank ends a torchrun job long before);
#: CLIP_BENCHMARK_DIFFUSION_RANK_WAIT_S overrides it
WAIT_FOR_RANKS = timedelta(hours=72)
#: how long ranks wait for each other to start and to compare settings (model loads included);
#: CLIP_BENCHMARK_DIFFUSION_RANK_TIMEOUT_S overrides it
RANK_TIMEOUT = timedelta(minutes=30)


def _seconds(variable: str, default: timedelta) -> timedelta:
    text = os.environ.get(variable)
    try:
        return timedelta(seconds=float(text)) if text else default
    except ValueError:
        return default
_RANK_FILE = re.compile(r"\.diffusion\.rank(\d+)\.jsonl$")


def world_from_env() -> tuple[int, int, int]:
    """(local rank, rank, world size) as clip_benchmark reads them (torchrun, Slurm, MPI)."""
    from clip_benchmark.cli import world_info_from_env

    return world_info_from_env()


@dataclass
class Shard:
    """This process's place in a multi-process evaluation, and the store the ranks share."""

    rank: int
    world_size: int
    local_rank: int
    store: Any  # torch.distributed.Store
    #: the job's store without a run prefix, and how many runs this process started in it
    job_store: Any = None
    runs: int = 0

    def for_run(self, run_name: str) -> "Shard":
        """Keys of one evaluation (one record) never meet those of another in the same job."""
        from torch.distributed import PrefixStore

        self.runs += 1
        return Shard(self.rank, self.world_size, self.local_rank, PrefixStore(f"{run_name}/", self.store),
                     job_store=PrefixStore(f"run{self.runs}/", self.store))

    def agree(self, what: str, values: dict[str, Any], job: bool = False) -> None:
        """Every rank publishes `values`; all must be equal, or ShardError names the first rank whose
        values differ from rank 0's and how. `job`: compare in the job's store (before the run's own
        keys, which differ when the record paths do). Waits at most RANK_TIMEOUT for the others."""
        store = self.job_store if job and self.job_store is not None else self.store
        store.set(f"agree/{what}/{self.rank}", json.dumps(values, sort_keys=True, default=str))
        keys = [f"agree/{what}/{r}" for r in range(self.world_size)]
        timeout = _seconds("CLIP_BENCHMARK_DIFFUSION_RANK_TIMEOUT_S", RANK_TIMEOUT)
        try:
            store.wait(keys, timeout)
        except Exception:  # c10d raises its own timeout types
            missing = [r for r in range(self.world_size) if not store.check([keys[r]])]
            raise ShardError(f"rank {self.rank}: rank(s) {missing} did not reach the {what} check within "
                             f"{timeout.total_seconds():g} s (crashed, or launched with another command?); "
                             "set CLIP_BENCHMARK_DIFFUSION_RANK_TIMEOUT_S to wait longer") from None
        reference = json.loads(store.get(keys[0]))
        for r in range(1, self.world_size):
            other = json.loads(store.get(keys[r]))
            if other != reference:
                differing = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
                detail = "; ".join(f"{k}: rank 0 {_short(reference.get(k))}, rank {r} {_short(other.get(k))}"
                                   for k in differing[:3])
                raise ShardError(f"rank {r} was launched with other {what} than rank 0 ({detail}); every rank "
                                 "of a job must run the same command, or its work would be thrown away")

    def claim(self, image_key: int) -> bool:
        """True for exactly one rank per image key (the first to ask)."""
        return int(self.store.add(f"claim/{image_key:016x}", 1)) == 1

    def finished(self) -> None:
        self.store.set(f"finished/{self.rank}", "1")

    def wait_for_other_ranks(self) -> None:
        keys = [f"finished/{r}" for r in range(self.world_size) if r != self.rank]
        timeout = _seconds("CLIP_BENCHMARK_DIFFUSION_RANK_WAIT_S", WAIT_FOR_RANKS)
        try:
            self.store.wait(keys, timeout)
        except Exception:  # c10d raises its own timeout types
            missing = [int(k.split("/")[1]) for k in keys if not self.store.check([k])]
            raise ShardError(f"rank {self.rank} waited {timeout.total_seconds():g} s for rank(s) {missing} to "
                             "finish; their images so far are in their records (rerun the same command to "
                             "resume); set CLIP_BENCHMARK_DIFFUSION_RANK_WAIT_S to wait longer") from None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


_process_shard: dict[str, Optional[Shard]] = {}


def shard_from_env() -> Optional[Shard]:
    """This process's shard (created once), or None when the world has one process."""
    if "shard" not in _process_shard:
        local_rank, rank, world_size = world_from_env()
        shard = None
        if world_size > 1:
            from torch.distributed import rendezvous

            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
            if missing:
                raise RuntimeError(f"a {world_size}-process diffusion run needs {' and '.join(missing)} in the "
                                   "environment (torchrun sets them; under srun export them, e.g. the first node's "
                                   "hostname and a free port)")
            timeout = _seconds("CLIP_BENCHMARK_DIFFUSION_RANK_TIMEOUT_S", RANK_TIMEOUT)
            try:
                store, _, _ = next(rendezvous(f"env://?rank={rank}&world_size={world_size}", timeout=timeout))
            except Exception as error:  # c10d raises its own timeout and connection types
                raise RuntimeError(f"rank {rank} of {world_size}: the other ranks did not join at "
                                   f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within "
                                   f"{timeout.total_seconds():g} s ({type(error).__name__}); set "
                                   "CLIP_BENCHMARK_DIFFUSION_RANK_TIMEOUT_S to wait longer") from None
            shard = Shard(rank, world_size, local_rank, store)
        _process_shard["shard"] = shard
    return _process_shard["shard"]


def rank_record_path(record_path: str, rank: int) -> str:
    """Rank 0 writes the record itself; rank R writes `X.diffusion.rank<R>.jsonl` beside it."""
    return record_path if rank == 0 else f"{record_stem(record_path)}.diffusion.rank{rank}.jsonl"


def other_rank_records(record_path: str) -> list[str]:
    """Every rank record of `record_path` on disk, from this job or any earlier world size."""
    found = glob.glob(glob.escape(record_stem(record_path)) + ".diffusion.rank*.jsonl")
    return sorted(path for path in found if _RANK_FILE.search(path))
