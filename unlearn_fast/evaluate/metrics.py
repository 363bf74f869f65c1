"""Ranking and summary metrics of the evaluation harness (each checked against hand-computed values in the tests)."""
from __future__ import annotations

import math

import numpy as np


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, ties by index, NaN last: reproducible on every platform (Attribution.order)."""
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    return np.lexsort((np.arange(len(scores)), -scores))


def rank_positions(scores: np.ndarray) -> np.ndarray:
    """The 1-based rank of every index in ranking(scores)."""
    position = np.empty(len(scores), dtype=np.int64)
    position[ranking(scores)] = np.arange(1, len(scores) + 1)
    return position


def pixel_mse(image: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Mean squared difference in [0, 1] pixel units between uint8 `image` (H, W, 3) and each of `others` (n, H, W, 3)
    (or between two stacks of the same length, row by row)."""
    a = np.asarray(image, np.float64) / 255
    b = np.asarray(others, np.float64) / 255
    return ((a - b) ** 2).reshape(len(b), -1).mean(axis=1)


def recall_at_k(scores: np.ndarray, relevant, k: int) -> float:
    """Share of the relevant indices found among the k highest scores."""
    relevant = set(int(i) for i in relevant)
    if not relevant:
        raise ValueError("recall_at_k needs at least one relevant index")
    return len(relevant & set(ranking(scores)[:k].tolist())) / len(relevant)


def average_precision(scores: np.ndarray, relevant) -> float:
    """Mean over the relevant items of the precision at each one's rank (the AP behind mAP)."""
    relevant = set(int(i) for i in relevant)
    if not relevant:
        raise ValueError("average_precision needs at least one relevant index")
    hits = np.isin(ranking(scores), list(relevant))
    ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the relevant items
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def mean_and_se(values) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / √n); the SE of a single value is NaN, not 0."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return math.nan, math.nan
    if values.size == 1:
        return float(values[0]), math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def format_mean_se(mean: float, se: float, digits: int = 4) -> str:
    """"m ± se" for tables; "–" for no value and no "± nan" for a single one."""
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if se is None or math.isnan(se) else f" ± {se:.{digits}f}")
