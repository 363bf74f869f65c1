"""Choosing a method setting on validation prompts, never on the evaluation queries (METHOD.md, DESIGN.md).

Validation queries are made from captions of TRAINING images (drawn with their own seed): the model generates an
image from the caption, and the training image(s) with that caption are the answer by construction. A setting is
judged by the mean reciprocal rank of that answer. The evaluation queries (held-out prompts, planted or customised
concepts) never enter this choice.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from ..query import query_from_prompt
from .metrics import rank_positions

VALIDATION_SEED = 2026


def validation_prompts(dataset, count: int, seed: int = VALIDATION_SEED, exclude_prompts=()
                       ) -> list[tuple[str, list[int]]]:
    """(caption, indices of the training images with exactly that caption) for `count` seeded training captions."""
    by_caption: dict[str, list[int]] = {}
    for i in range(len(dataset)):
        for caption in dataset.captions(i):
            by_caption.setdefault(caption, []).append(i)
    captions = sorted(c for c in by_caption if c not in set(exclude_prompts))
    chosen = np.random.default_rng(seed).choice(len(captions), min(count, len(captions)), replace=False)
    return [(captions[k], by_caption[captions[k]]) for k in chosen]


def validation_queries(model, dataset, count: int, seed: int = VALIDATION_SEED, steps: int = 50,
                       exclude_prompts=()) -> list[tuple[object, list[int]]]:
    """validation_prompts, each with the image the model generates from it (seed + its position)."""
    return [(query_from_prompt(model, prompt, seed=seed + n, steps=steps), answer)
            for n, (prompt, answer) in enumerate(validation_prompts(dataset, count, seed, exclude_prompts))]


def mean_reciprocal_rank(scores: np.ndarray, answers: list[list[int]]) -> float:
    """Mean over queries of 1 / (best rank of any of that query's answers)."""
    reciprocal = []
    for row, answer in zip(scores, answers):
        reciprocal.append(1.0 / rank_positions(row)[answer].min())
    return float(np.mean(reciprocal))


def choose_setting(attributor, make_method, candidates: dict, validation, record_path: str | None = None):
    """The candidate (by name) with the highest validation MRR; `make_method(value)` builds the method.
    Returns (name, value, {name: MRR}); the record is written to record_path (and read back there next time)."""
    from ..methods import run_method

    if record_path and os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
        if sorted(record["mrr"]) == sorted(candidates):
            return record["chosen"], candidates[record["chosen"]], record["mrr"]
    queries, answers = [q for q, _ in validation], [a for _, a in validation]
    mrr = {name: mean_reciprocal_rank(run_method(make_method(value), attributor, queries).scores, answers)
           for name, value in candidates.items()}
    chosen = max(mrr, key=lambda name: (mrr[name], -list(candidates).index(name)))  # ties: the earlier candidate
    if record_path:
        with open(record_path, "w", encoding="utf-8") as handle:
            json.dump({"chosen": chosen, "mrr": mrr, "prompts": [q.prompt for q in queries],
                       "candidates": {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                      for k, v in candidates.items()}}, handle, indent=1)
    return chosen, candidates[chosen], mrr


RISE_ALPHAS = (0.03, 0.1, 0.3, 1.0)  # relative rises of the query's loss (the "rise" step rule)


def choose_alpha(attributor, alphas, prompts: int, method: str, options: dict, held_out, record_path: str,
                 steps: int = 50, log=print, extensions: int = 2) -> float:
    """α of the AbU variant `method` by validation MRR on `prompts` training captions (never the held-out evaluation
    prompts); `options`: its other settings. While the best α is at an end of the grid, the grid grows by a factor 3
    past that end (at most `extensions` times), so the choice is not an artefact of where the grid stops. Recorded in
    record_path and read back from there."""
    from ..methods import build_method

    validation = validation_queries(attributor.model, attributor.dataset, prompts, steps=steps,
                                    exclude_prompts=held_out)
    others = {k: v for k, v in options.items() if k != "alpha"}
    grid = sorted(alphas)
    for extension in range(extensions + 1):
        candidates = {f"alpha={a:g}": a for a in grid}
        name, alpha, mrr = choose_setting(attributor, lambda a: build_method(method, alpha=a, **others), candidates,
                                          validation, record_path)
        if len(grid) < 2 or grid[0] < alpha < grid[-1] or extension == extensions:
            break
        grid = [grid[0] / 3] + grid if alpha == grid[0] else grid + [grid[-1] * 3]
    log(f"{method}: α chosen on {len(validation)} validation prompts: {name} (MRR {mrr})")
    return alpha
