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
    return positions_in(ranking(scores))


def positions_in(order: np.ndarray) -> np.ndarray:
    """The 1-based place of every index in `order` (a ranking): its inverse permutation."""
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(1, len(order) + 1)
    return position


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks by increasing value, ties sharing their average rank (NaNs tie with each other, last)."""
    _, inverse, counts = np.unique(np.asarray(values, np.float64), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of each distinct value's last member
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two vectors (average ranks for ties); NaN when either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")
