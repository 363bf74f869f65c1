"""Attribution by unlearning (the method of this package) behind the common method interface."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..attribution import Attribution
from ..unlearn import UnlearnSettings
from .base import AttributionMethod


@dataclass
class AbU(AttributionMethod):
    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    name = "abu"

    def score(self, attributor, queries) -> np.ndarray:
        return self.attribute(attributor, queries).scores

    def attribute(self, attributor, queries) -> Attribution:
        # The Attributor caches each query itself (unlearned weights, losses after, scores): records point there.
        return attributor.attribute(list(queries), self.unlearn)
