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
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from .records import record_stem

#: how long rank 0 waits for the slowest rank (a dead rank ends a torchrun job long before)
WAIT_FOR_RANKS = timedelta(hours=72)
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

    def for_run(self, run_name: str) -> "Shard":
        """Keys of one evaluation (one record) never meet those of another in the same job."""
        from torch.distributed import PrefixStore

        return Shard(self.rank, self.world_size, self.local_rank, PrefixStore(f"{run_name}/", self.store))

    def claim(self, image_key: int) -> bool:
        """True for exactly one rank per image key (the first to ask)."""
        return int(self.store.add(f"claim/{image_key:016x}", 1)) == 1

    def finished(self) -> None:
        self.store.set(f"finished/{self.rank}", "1")

    def wait_for_other_ranks(self) -> None:
        self.store.wait([f"finished/{r}" for r in range(self.world_size) if r != self.rank], WAIT_FOR_RANKS)


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
            store, _, _ = next(rendezvous(f"env://?rank={rank}&world_size={world_size}",
                                          timeout=timedelta(minutes=30)))
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
