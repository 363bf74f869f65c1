"""The order of a score vector, the same on every platform: by decreasing score, ties by index, NaN last. Reports,
judges and the two-stage query all rank through it, so they agree on every tie."""
from __future__ import annotations

import numpy as np


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, ties by index, NaN after every number (-inf included)."""
    scores = np.asarray(scores, np.float64)
    keyed = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.arange(len(scores)), np.isnan(scores), -keyed))


def rank_positions(scores: np.ndarray) -> np.ndarray:
    """The 1-based rank of every index in ranking(scores)."""
    position = np.empty(len(scores), dtype=np.int64)
    position[ranking(scores)] = np.arange(1, len(scores) + 1)
    return position
