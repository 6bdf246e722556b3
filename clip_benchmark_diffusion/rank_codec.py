"""Carry a ranking through clip_benchmark's CLIP-shaped arithmetic without losing it.

clip_benchmark turns (image features, class embeddings) into logits as
`100 * normalize(image) @ normalize(mean(normalize(text)))`, under autocast when amp is on
(bfloat16 on CPU, float16 on CUDA). Diffusion errors of near-tied classes would not survive
that rounding, so the adapter sends *ranks*, not errors:

* class k's text embedding is the one-hot vector e_k (dimension `capacity + 1`), so the
  classifier matrix is an identity and logit_k = 100 * image_feature[k];
* image_feature[k] = L[rank_k] / 100, where L is a strictly decreasing grid of numbers that
  the active autocast dtype represents exactly, at least two units in the last place apart
  (so the fp32 normalise/scale perturbations round back to the same grid point);
* one extra "ballast" coordinate makes the vector's norm exactly 1, so normalize() is a no-op.

The grid holds about 13,000 distinct ranks in float16 and 16,000 in bfloat16; candidates
ranked beyond that (or beyond `capacity`) share the lowest value, which top-1/top-5
metrics never look at.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

LOGIT_SCALE = 100.0  # clip_benchmark's fixed multiplier
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16}


def rank_grid(dtype: torch.dtype) -> torch.Tensor:
    """Strictly decreasing float32 logits, each exactly representable in `dtype` (bfloat16
    for float32 runs) and two representable steps apart: 0.5 down to the smallest normal
    number, then -smallest normal down to -0.5."""
    grid_dtype = torch.bfloat16 if dtype not in _INT_VIEW else dtype
    view = _INT_VIEW[grid_dtype]
    top = int(torch.tensor(0.5, dtype=grid_dtype).view(view))
    bottom = int(torch.tensor(torch.finfo(grid_dtype).tiny, dtype=grid_dtype).view(view))
    positive = torch.arange(top, bottom - 1, -2, dtype=torch.int32).to(view).view(grid_dtype).to(torch.float32)
    return torch.cat([positive, -positive.flip(0)])


def active_autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype clip_benchmark's matmul will run in right now (None = float32)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def class_embedding(index: int, capacity: int, rows: int) -> torch.Tensor:
    """Text-side vectors of candidate `index` (`rows` identical one-hot rows)."""
    if index >= capacity:
        raise ValueError(f"more than {capacity} candidates; raise max_candidates")
    embedding = torch.zeros(rows, capacity + 1)
    embedding[:, index] = 1.0
    return embedding


def encode_rankings(rankings: Sequence[Sequence[int]], capacity: int, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Image-side vectors whose logits order candidates as `rankings` (best first)."""
    grid = rank_grid(dtype or torch.float32)
    features = torch.zeros(len(rankings), capacity + 1, dtype=torch.float64)
    for row, ranking in enumerate(rankings):
        ranks = torch.arange(len(ranking)).clamp(max=len(grid) - 1)
        features[row, torch.as_tensor(list(ranking))] = grid[ranks].to(torch.float64) / LOGIT_SCALE
        ballast = 1.0 - float(features[row, :capacity].pow(2).sum())
        features[row, capacity] = ballast ** 0.5
    return features.to(torch.float32)
