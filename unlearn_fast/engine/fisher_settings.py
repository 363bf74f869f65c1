"""How the diagonal Fisher is estimated (engine/fisher.py runs it): draws per image, damping, seed; batch size and
backend change speed only. Declared with no torch import, so the command line builds its flags without the engines."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SettingsError, check_seed
from ..settings import SPEED, knob, non_negative_float, positive_int


@dataclass
class FisherSettings:
    """samples_per_example: (t, ε) draws per example. batch_size: rows per backward (rounded down to a multiple of
    batching.MIN_UNET_ROWS, at least one block); changes speed, never F.
    damping: λ added to the returned F so unlearning never divides by ~0 (METHOD.md §2: optional, the reference has
    none; λ = 0 gives the raw Fisher). backend: the ops backend of linear_fisher_diag ("auto", "cpp", "cuda", "triton",
    "reference")."""

    samples_per_example: int = knob(1, flag="--fisher-samples", parse=positive_int,
                                    help="(t, ε) draws per image for the Fisher")
    batch_size: int = knob(64, role=SPEED, cli=False, help="rows per backward")
    seed: int = knob(0, cli=False, help="the Fisher's noise seed (the command line's --score-seed sets it)")
    damping: float = knob(1e-8, parse=non_negative_float, help="λ added to the Fisher")
    backend: str = knob("auto", role=SPEED, cli=False, help="ops backend of the Fisher's linear_fisher_diag")

    def __post_init__(self):
        if self.samples_per_example < 1 or self.batch_size < 1 or self.damping < 0:
            raise SettingsError(f"FisherSettings needs samples_per_example, batch_size >= 1 and damping >= 0: {self}")
        check_seed(self.seed, "the Fisher's seed (--score-seed)")
