"""Expected calibration error and a histogram-binning calibrator (for confidence signals)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE with equal-width bins: sum_b (|b|/n) |accuracy(b) - mean confidence(b)|."""
    confidence = np.clip(np.asarray(confidence, dtype=float), 0.0, 1.0)
    correct = np.asarray(correct, dtype=float)
    if len(confidence) == 0:
        raise ValueError("no predictions")
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def fit_binning(raw: Sequence[float], correct: Sequence[bool], bins: int = 10):
    """Map a raw score to the accuracy of its equal-width bin on held-out data (bins with no
    data fall back to the overall accuracy): the simplest calibrator of a monotone signal."""
    raw = np.clip(np.asarray(raw, dtype=float), 0.0, 1.0)
    correct = np.asarray(correct, dtype=float)
    index = np.minimum((raw * bins).astype(int), bins - 1)
    table = np.array([correct[index == b].mean() if (index == b).any() else correct.mean() for b in range(bins)])

    def calibrate(values: Sequence[float]) -> np.ndarray:
        values = np.clip(np.asarray(values, dtype=float), 0.0, 1.0)
        return table[np.minimum((values * bins).astype(int), bins - 1)]

    return calibrate
