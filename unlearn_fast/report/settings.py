"""How an attribution is shown (the report's settings): presentation only, never part of what is computed. Declared
with no heavy import, so the command line builds its flags without loading the engines."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import PRESENTATION, knob, positive_int


@dataclass(frozen=True)
class ReportSettings:
    """How an attribution is shown: never part of what is computed."""

    top_k: int = knob(16, role=PRESENTATION, parse=positive_int, help="training images shown per query in the report")
