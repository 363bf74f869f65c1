"""Several first stages as one: images in the order of their best rank under any of them (ties: the first front's
rank), so the top C holds each front's top ~C/k. The two-stage query's default front is AbU's linearisation united
with a latent neighbour search (abu/linear.py, latent_similarity.py: each finds what the other misses).

Scores are −(position in that order): integers, exact in float32 below 2^24 images; only their order means anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ranking import rank_positions
from ..workspace import Workspace
from .base import AttributionMethod


@dataclass
class RankUnion(AttributionMethod):
    fronts: tuple
    title = "Union of rankings"
    score_meaning = "−(position in the fronts' merged order): only the order means anything"

    @property
    def name(self) -> str:
        return "-and-".join(front.name for front in self.fronts)  # a file-name part (artefact folders)

    def settings(self) -> dict:
        return {"fronts": [front.key for front in self.fronts]}

    def prepare_overrides(self) -> dict:
        overrides = {}
        for front in self.fronts:
            overrides.update(front.prepare_overrides())
        return overrides

    def prepare(self, workspace: Workspace) -> None:
        for front in self.fronts:
            front.prepare(workspace)

    def check(self, workspace: Workspace) -> None:
        for front in self.fronts:
            front.check(workspace)

    def score(self, workspace: Workspace, queries) -> np.ndarray:
        each = [front.attribute(workspace, queries).scores for front in self.fronts]  # each cached by its front
        out = np.empty_like(each[0], dtype=np.float32)
        for q in range(len(out)):
            ranks = np.stack([rank_positions(scores[q]) for scores in each])
            order = np.lexsort((ranks[0], ranks.min(0)))
            out[q, order] = -np.arange(len(order), dtype=np.float32)
        return out
