"""How AbU turns the losses before and after unlearning into a score per training image (issue 13's score variants).

    raw         τ(z) = L_after − L_before                                       (the paper)
    normalised  τ(z) = (L_after − L_before) / (L_after + L_before)             (MUCS: a relative rise, so images whose
                                                                                loss is large anyway do not dominate)
    calibrated  τ(z) − mean_r τ_r(z)   [÷ std_r τ_r(z) with spread]             τ_r: the raw scores of R reference
                                                                                queries (unrelated generations), so an
                                                                                image whose loss rises under ANY
                                                                                unlearning step scores near 0
    sensitivity τ(z) / √(mean_r τ_r(z)²)                                    the rise relative to the image's own
                                                                                sensitivity: its RMS rise when
                                                                                unrelated references are unlearnt
                                                                                (issue 28: hubs whose loss rises under
                                                                                any step are scaled down, not shifted)

Each rule reduces a (rows, timesteps, flips) pair of loss arrays the same way: mean over timesteps, then the rule, then
the mean over an example's caption rows, then the max over flips (the mirrored image counts as the same image).
"""
from __future__ import annotations

import numpy as np

SCORE_RULES = ("raw", "normalised", "calibrated", "sensitivity")
REFERENCE_RULES = ("calibrated", "sensitivity")  # the rules that read reference queries' scores
_BLOCK_ROWS = 65536  # rows reduced at a time (memory only: the sums are the same, in the same order per example)


def _per_row_change(before: np.ndarray, after: np.ndarray, rule: str) -> np.ndarray:
    b, a = before.mean(axis=1), after.mean(axis=1)  # (R, F): mean over timesteps
    if rule == "normalised":
        return (a - b) / (a + b)
    return a - b  # raw; calibrated starts from the raw change


def loss_change_scores(before: np.ndarray, after: np.ndarray, row_example: np.ndarray, num_examples: int,
                       rule: str = "raw") -> np.ndarray:
    """Scores per example from losses of (R, T, F) rows, row r scoring example row_example[r]:

        score(z) = max over flips f of  mean over z's captions c of  rule(mean over t of L_after, L_before)

    float64 arithmetic, float32 result (num_examples,); before and after may be memmaps (read a block at a time). An
    example without rows scores NaN. `calibrated` and `sensitivity` are the raw score here: calibrate() and
    by_sensitivity() apply the reference queries' response afterwards.
    """
    if rule not in SCORE_RULES:
        raise ValueError(f"score rule must be one of {SCORE_RULES}, got {rule!r}")
    if before.shape != after.shape or before.ndim != 3 or len(row_example) != len(before):
        raise ValueError(f"loss_change_scores needs before/after of one shape (R, T, F) and R row indices, got "
                         f"{before.shape}, {after.shape}, {len(row_example)} rows")
    row_example = np.asarray(row_example)
    total = np.zeros((num_examples, before.shape[2]))
    for start in range(0, len(before), _BLOCK_ROWS):  # a block of rows at a time: memmapped losses stay on disk
        rows = slice(start, start + _BLOCK_ROWS)
        change = _per_row_change(np.asarray(before[rows], np.float64), np.asarray(after[rows], np.float64), rule)
        np.add.at(total, row_example[rows], change)
    count = np.bincount(row_example, minlength=num_examples)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).max(axis=1).astype(np.float32)


def calibrate(scores: np.ndarray, reference: np.ndarray, spread: bool = False) -> np.ndarray:
    """scores (N,) minus the mean of the reference queries' scores (R, N) per image; with spread, divided by their
    standard deviation per image (needs R ≥ 2; a constant image keeps its centred score)."""
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    if reference.ndim != 2 or reference.shape[1] != scores.shape[-1] or len(reference) < (2 if spread else 1):
        raise ValueError(f"calibrate needs reference scores (R, {scores.shape[-1]}) with R >= {2 if spread else 1}, "
                         f"got {reference.shape}")
    centred = scores - reference.mean(axis=0)
    if spread:
        std = reference.std(axis=0, ddof=1)
        centred = np.where(std > 0, centred / np.where(std > 0, std, 1.0), centred)
    return centred.astype(np.float32)


def by_sensitivity(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """scores (N,) divided per image by the root-mean-square of the reference queries' scores (R, N) for it: how much
    more this query raises the image's loss than unlearning anything does. An image no reference moves (RMS 0) keeps
    its raw score divided by the smallest positive RMS, so it is not lost to a division by zero."""
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    if reference.ndim != 2 or reference.shape[1] != scores.shape[-1] or len(reference) < 1:
        raise ValueError(f"by_sensitivity needs reference scores (R, {scores.shape[-1]}) with R >= 1, got "
                         f"{reference.shape}")
    rms = np.sqrt(np.mean(reference ** 2, axis=0))
    floor = rms[rms > 0].min() if (rms > 0).any() else 1.0
    return (scores / np.maximum(rms, floor)).astype(np.float32)
