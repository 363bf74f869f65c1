"""Choosing a method setting on validation prompts, never on the evaluation queries (METHOD.md, DESIGN.md).

Validation queries are made from captions of TRAINING images (drawn with their own seed): the model generates an
image from the caption, and the training image(s) with that caption are the answer by construction. A setting is
judged by the mean reciprocal rank of that answer (MRR). The LDS run offers a stricter judge: LDS on validation
queries of its own, split off before the evaluation queries (evaluate.lds). The evaluation queries (held-out prompts,
planted or customised concepts) never enter any choice.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..query import query_from_prompt
from ..ranking import rank_positions
from ..store import read_entries
from .output_files import write_json

logger = logging.getLogger(__name__)

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


@dataclass
class Validation:
    """Queries kept apart from every evaluation query, and the rule that judges a method's scores (Q, N) on them
    (higher is better). criterion names the rule in records: "mrr" (training captions, this module) or "lds"
    (the LDS run's validation queries, evaluate.lds)."""

    criterion: str
    queries: list
    judge: Callable[[np.ndarray], float]


def caption_validation(model, dataset, count: int, steps: int = 50, exclude_prompts=()) -> Validation:
    """MRR of the training image(s) whose caption each generated validation query was made from.

    Cheap and needs no retraining, but it rewards following the caption: an image that shares the query's caption is
    the answer whether or not the query looks like it."""
    validation = validation_queries(model, dataset, count, steps=steps, exclude_prompts=exclude_prompts)
    answers = [answer for _, answer in validation]
    return Validation("mrr", [query for query, _ in validation], lambda scores: mean_reciprocal_rank(scores, answers))


def _recorded(value):
    """A candidate as JSON: a step rule as its RULE:VALUE text, another dataclass as its fields."""
    if hasattr(value, "key_items"):
        return str(value)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def choose_setting(workspace, make_method, candidates: dict, validation: Validation, record_path: str | None = None,
                   identity: dict | None = None):
    """The candidate (by name) whose scores `validation` judges best; `make_method(value)` builds the method.
    Returns (name, value, {name: criterion value}). The record is written to record_path and read back there next
    time when it holds the same candidates, criterion and `identity` (what else defines the method)."""
    from ..methods import run_method

    if record_path and os.path.isfile(record_path):
        record = read_entries(record_path)
        values = record.get("values", record.get("mrr"))
        if (sorted(values) == sorted(candidates) and record.get("criterion", "mrr") == validation.criterion
                and record.get("identity") == identity
                and record.get("prompts") == [q.prompt for q in validation.queries]):
            return record["chosen"], candidates[record["chosen"]], values
    values = {name: validation.judge(run_method(make_method(value), workspace, validation.queries).scores)
              for name, value in candidates.items()}
    chosen = max(values, key=lambda name: (values[name], -list(candidates).index(name)))  # ties: the earlier one
    if record_path:
        write_json(record_path, {"criterion": validation.criterion, "chosen": chosen, "values": values,
                                 "identity": identity, "prompts": [q.prompt for q in validation.queries],
                                 "candidates": {k: _recorded(v) for k, v in candidates.items()}})
    return chosen, candidates[chosen], values


def choose_step(workspace, step_rule, factors, method: str, options: dict, validation: Validation,
                record_path: str | None, extensions: int = 2):
    """The step of the AbU variant `method` (with its other settings `options`) judged by `validation`, never by the
    evaluation queries: among `step_rule` at value × `factors` (step_rules.grid, so the grid is in the rule's own unit
    and holds its value). While the best is at an end of the grid, the grid grows by a factor 3 past that end (at most
    `extensions` times), so the choice is not an artefact of where the grid stops. Recorded in record_path and read
    back from there."""
    from ..methods import build_method

    others = {k: v for k, v in options.items() if k != "step"}
    identity = {k: v for k, v in build_method(method, **others).settings().items() if k != "step"}
    identity["rule"] = step_rule.rule
    grid = sorted(step_rule.grid(factors), key=lambda rule: rule.value)
    for extension in range(extensions + 1):
        candidates = {str(rule): rule for rule in grid}
        name, chosen, values = choose_setting(workspace, lambda rule: build_method(method, step=rule, **others),
                                              candidates, validation, record_path, identity)
        if len(grid) < 2 or grid[0].value < chosen.value < grid[-1].value or extension == extensions:
            break
        grid = [*grid[0].grid((1 / 3,)), *grid] if chosen == grid[0] else [*grid, *grid[-1].grid((3,))]
    logger.info(f"{method}: step chosen on {len(validation.queries)} validation queries by {validation.criterion}: "
                f"{name} ({values})")
    return chosen
