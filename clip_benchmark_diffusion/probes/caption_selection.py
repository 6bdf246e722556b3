"""Image-caption selection samples: in memory (torch Dataset) and on disk (clip_benchmark wds).

clip_benchmark's `image_caption_selection` task counts an image as correct when its first
caption scores highest, so the true caption always comes first. Note that ties go to the
first caption too (argmax): a model that cannot tell the captions apart at all (e.g. a
bag-of-words text encoder on an attribute swap) scores 100%, so report binding accuracy
next to its recognition controls.
"""
from __future__ import annotations

import math
import os
import tarfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from PIL import Image
from torch.utils.data import Dataset

from ..datasets import image_bytes, tar_add

#: `clip_benchmark eval` reads wds folders with 4 DataLoader workers by default and webdataset
#: fails on a worker without a shard: write at least 4 shards (when there are 4 samples), and
#: more for larger sets so that more workers can be used (at most `nshards.txt` workers)
MIN_SHARDS = 4
SHARD_SIZE = 1000


@dataclass(frozen=True)
class CaptionSample:
    """One image file and its candidate captions, the true caption first."""

    image: str
    captions: tuple[str, ...]


class CaptionSelectionDataset(Dataset):
    """`(transform(image), [captions])` per sample; batch with clip_benchmark's
    `image_captions_collate_fn` and evaluate with `image_caption_selection.evaluate`."""

    def __init__(self, samples: Sequence[CaptionSample], transform: Optional[Callable] = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        with Image.open(sample.image) as opened:
            image = opened.convert("RGB")
        return (self.transform(image) if self.transform else image), list(sample.captions)


def write_caption_selection_wds(samples: Sequence[CaptionSample], out_dir: str, split: str = "test") -> str:
    """Write `samples` as a clip_benchmark `wds/` retrieval folder; returns `out_dir`.

    Evaluate with `clip_benchmark eval --dataset wds/<name> --dataset_root <out_dir>
    --task image_caption_selection`.
    """
    if not samples:
        raise ValueError(f"{out_dir}: no samples to write")
    for sample in samples:
        if len(sample.captions) < 2 or any("\n" in caption for caption in sample.captions):
            raise ValueError(f"{sample.image}: needs >= 2 captions without newlines, got {sample.captions}")
    split_dir = os.path.join(out_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    shards = max(min(MIN_SHARDS, len(samples)), math.ceil(len(samples) / SHARD_SIZE))
    for shard in range(shards):
        start, stop = shard * len(samples) // shards, (shard + 1) * len(samples) // shards
        with tarfile.open(os.path.join(split_dir, f"{shard}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, stop):
                extension, data = image_bytes(samples[index].image)
                tar_add(tar, f"{index:08d}.{extension}", data)
                tar_add(tar, f"{index:08d}.txt", "\n".join(samples[index].captions).encode("utf-8"))
    with open(os.path.join(split_dir, "nshards.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"{shards}\n")
    with open(os.path.join(out_dir, "dataset_type.txt"), "w", encoding="utf-8") as handle:
        handle.write("retrieval\n")
    return out_dir
