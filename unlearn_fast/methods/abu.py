"""Attribution by unlearning (the method of this package) behind the common method interface."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..unlearn import UnlearnSettings
from .base import AttributionMethod


@dataclass
class AbU(AttributionMethod):
    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    name = "abu"

    def score(self, attributor, queries) -> np.ndarray:
        return attributor.attribute(queries, self.unlearn).scores  # cached per query by the Attributor itself
