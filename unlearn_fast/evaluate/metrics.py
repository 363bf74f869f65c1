"""Ranking and summary metrics of the evaluation harness (each checked against hand-computed values in the tests)."""
from __future__ import annotations

import math

import numpy as np

from ..ranking import ranking, spearman  # the judges rank as the reports do (spearman: also the judges' own)


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


# ------------------------------------------------------------------------------------------ rank correlation, LDS
def linear_datamodeling_scores(scores: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """LDS per query: scores (Q, N) attribution scores (higher = more helpful to the query), masks (M, N) bool (row m:
    the training rows subset model m saw), losses (M, Q) the query losses under the subset models. Returns (Q,)."""
    scores, masks, losses = np.asarray(scores, np.float64), np.asarray(masks, bool), np.asarray(losses, np.float64)
    if scores.ndim != 2 or masks.shape[1] != scores.shape[1] or losses.shape != (len(masks), len(scores)):
        raise ValueError(f"LDS needs scores (Q, N), masks (M, N), losses (M, Q); got {scores.shape}, {masks.shape}, "
                         f"{losses.shape}")
    predicted = masks.astype(np.float64) @ scores.T  # (M, Q): g_m(q) = Σ_{z ∈ S_m} τ_q(z)
    return np.array([spearman(predicted[:, q], -losses[:, q]) for q in range(len(scores))])


def centred_linear_datamodeling_scores(scores: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """LDS with the query-independent part removed (issue 28): per subset model m, both the predictions g_m(q) and
    the losses L_m(q) are centred over the queries before the per-query Spearman over m. A ranking that is the same for
    every query predicts only what every query shares (a subset that lowers every loss), so its centred predictions
    are constant and its centred LDS is undefined (NaN; count it as 0). Needs ≥ 2 queries."""
    scores, masks, losses = np.asarray(scores, np.float64), np.asarray(masks, bool), np.asarray(losses, np.float64)
    if scores.ndim != 2 or len(scores) < 2 or masks.shape[1] != scores.shape[1] or losses.shape != (len(masks),
                                                                                                   len(scores)):
        raise ValueError(f"centred LDS needs scores (Q >= 2, N), masks (M, N), losses (M, Q); got {scores.shape}, "
                         f"{masks.shape}, {losses.shape}")
    raw = masks.astype(np.float64) @ scores.T  # (M, Q)
    predicted = raw - raw.mean(axis=1, keepdims=True)
    centred = losses - losses.mean(axis=1, keepdims=True)
    # a prediction constant over m up to rounding is no prediction: treat it as exactly constant
    flat = np.ptp(predicted, axis=0) <= 1e-9 * (np.abs(raw).max() + 1e-300)
    return np.array([np.nan if flat[q] else spearman(predicted[:, q], -centred[:, q]) for q in range(len(scores))])


# ---------------------------------------------------------------------------------- query-independent rankings
def hub_correlation(scores: np.ndarray) -> np.ndarray:
    """Per query q: Spearman between q's scores and the mean of the OTHER queries' scores (Q >= 2). Near 1: the
    ranking is mostly what every query gets (hubs); near 0: it is about this query."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or len(scores) < 2:
        raise ValueError(f"hub_correlation needs scores (Q >= 2, N), got {scores.shape}")
    total = np.nansum(scores, axis=0)
    return np.array([spearman(scores[q], (total - np.nan_to_num(scores[q])) / (len(scores) - 1))
                     for q in range(len(scores))])


def hub_share(scores: np.ndarray, k: int = 10, hubs: int = 10) -> float:
    """Share of all top-k places (over the queries) taken by the `hubs` images that take the most of them. With Q
    queries of disjoint answers it is hubs/(Q·k)-ish; a query-independent ranking gives 1."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or not len(scores):
        raise ValueError(f"hub_share needs scores (Q, N), got {scores.shape}")
    k = min(k, scores.shape[1])
    counts = np.bincount(np.concatenate([ranking(row)[:k] for row in scores]), minlength=scores.shape[1])
    return float(np.sort(counts)[::-1][:hubs].sum() / (len(scores) * k))


# ------------------------------------------------------------------------------------- groups (leave-one-group-out)
def top1_group(predicted: np.ndarray, truth: np.ndarray) -> float:
    """1 when the group a method ranks first is the group whose removal raised the query's loss most (GUDA's Top-1)."""
    return float(int(np.argmax(predicted)) == int(np.argmax(truth)))


def ndcg_at_k(predicted: np.ndarray, truth: np.ndarray, k: int = 3) -> float:
    """NDCG@k of the method's group order, each group's gain its true loss rise clipped at 0 (a removal that
    lowered the loss is no evidence for the group); 0/0 (no rise at all) is NaN."""
    predicted, gains = np.asarray(predicted, np.float64), np.maximum(np.asarray(truth, np.float64), 0.0)
    k = min(k, len(gains))
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    order = np.lexsort((np.arange(len(predicted)), -predicted))[:k]  # ties: the first group first
    ideal = float(np.sort(gains)[::-1][:k] @ discount)
    return float(gains[order] @ discount / ideal) if ideal > 0 else float("nan")
