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
    positions = torch.zeros(len(rankings), max((len(r) for r in rankings), default=0), dtype=torch.long)
    for row, ranking in enumerate(rankings):
        positions[row, torch.as_tensor(list(ranking), dtype=torch.long)] = torch.arange(len(ranking))
    return encode_positions(positions, capacity, dtype)


def joint_positions(scores: torch.Tensor) -> torch.Tensor:
    """Grid positions of all entries of a score matrix ranked together (higher score first):
    every comparison within a row *and* within a column survives the encoding."""
    order = torch.argsort(-scores.flatten(), stable=True)
    positions = torch.empty_like(order)
    positions[order] = torch.arange(len(order))
    return positions.view(scores.shape)


def encode_positions(positions: torch.Tensor, capacity: int, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Rows of unit vectors with feature[k] = grid[positions[row, k]] / 100 (+ ballast)."""
    grid = rank_grid(dtype or torch.float32).to(torch.float64)
    rows, columns = positions.shape
    if columns > capacity:
        raise ValueError(f"more than {capacity} candidates; raise max_candidates")
    features = torch.zeros(rows, capacity + 1, dtype=torch.float64)
    features[:, :columns] = grid[positions.clamp(max=len(grid) - 1)] / LOGIT_SCALE
    features[:, capacity] = (1.0 - features[:, :capacity].pow(2).sum(dim=1)).sqrt()
    return features.to(torch.float32)
