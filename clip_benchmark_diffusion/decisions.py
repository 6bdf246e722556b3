"""An image's decision: what the scorer, a replay and a record all say about one image.

`ImageScores` is built from a strategy's finished `ImageState` (`image_scores`) by the scorer and by
`replay`, and written as an image line by `records`; it lives below all three so the journal never
imports the scorer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .strategies import ImageState


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
