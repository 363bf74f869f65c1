"""The floor every method must beat: a seeded random ranking (different for each query, same on every run)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import AttributionMethod


@dataclass
class RandomRanking(AttributionMethod):
    seed: int = 0
    name = "random"
    title = "Random ranking"
    score_meaning = "a seeded random number: the chance line every method must beat"

    def score(self, workspace, queries) -> np.ndarray:
        n = len(workspace.dataset)
        # Seeded by the query's key, so a query's scores do not depend on which other queries are in the call.
        return np.stack([np.random.default_rng([self.seed, int(q.key, 16)]).random(n) for q in queries]
                        ).astype(np.float32)
