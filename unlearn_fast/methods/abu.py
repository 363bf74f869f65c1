"""Attribution by unlearning (the method of this package) behind the common method interface, and its named variants.

A variant is a named set of settings (VARIANTS), so every harness and table can ask for it by name: "abu" is the
package's default (DEFAULT), "abu-paper" the recipe of Wang et al. (NeurIPS 2024) as this package ran it before issue 13 (raw
score, step α/N, one step, cross-attention K/V, noise keyed per example), the others change one thing each.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..attribution import Attribution
from ..errors import SettingsError
from ..scoring import NOISE_KEYS
from ..unlearn import UnlearnSettings
from .base import AttributionMethod

# The paper's recipe: UnlearnSettings' defaults with noise keyed per example.
PAPER = {}
# The package's default, chosen by LDS on the LDS run's validation queries among the measured variants, each at its
# own validated α (benchmarks/README.md, "Choosing AbU's default"): the paper's step with scoring noise shared by
# every image at a timestep, α = 0.003. Chosen at N = 400; whether α = 0.003 holds at other N is not yet shown (the
# same-domain planted test finds an easy plant at N = 200 and loses hard ones at N ≈ 1,000).
DEFAULT = {"noise": "shared", "alpha": 0.003}

# name -> settings that differ from the paper's recipe ("noise" is the work directory's scoring noise key).
VARIANTS = {
    "abu": DEFAULT,
    "abu-paper": PAPER,
    "abu-normalised": {"score": "normalised"},
    "abu-calibrated": {"score": "calibrated"},
    "abu-calibrated-spread": {"score": "calibrated", "spread": True},
    "abu-rise": {"step": "rise"},
    "abu-3steps": {"steps": 3, "draws": 200},
    "abu-attention": {"group": "attention"},
    "abu-shared-noise": {"noise": "shared"},
    "abu-cap": {"cap": True},
    "abu-retain": {"retain": 64},
    # Kronecker curvature changes the step's scale: with the rise rule, α keeps its meaning across preconditioners.
    "abu-kfac": {"curvature": "kfac", "step": "rise"},
    "abu-ekfac": {"curvature": "ekfac", "step": "rise"},
}

RECIPES = {"paper": PAPER, "default": DEFAULT}


def recipe_noise(recipe: str = "default") -> str:
    """The scoring noise key a work directory needs for `recipe` (RECIPES)."""
    return RECIPES[recipe].get("noise", "example")


@dataclass
class AbU(AttributionMethod):
    """noise: the scoring noise key the work directory must be prepared with (scoring.NOISE_KEYS)."""

    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    noise: str = "example"
    name: str = "abu"

    def __post_init__(self):
        if self.noise not in NOISE_KEYS:
            raise SettingsError(f"noise must be one of {NOISE_KEYS}, got {self.noise!r}")

    @classmethod
    def variant(cls, name: str, **options) -> "AbU":
        """The variant `name` (VARIANTS), with `options` (UnlearnSettings fields or noise) on top."""
        if name not in VARIANTS:
            raise SettingsError(f"unknown AbU variant {name!r}; choose from {', '.join(VARIANTS)}")
        values = {**VARIANTS[name], **options}
        noise = values.pop("noise", "example")
        try:
            return cls(UnlearnSettings(**values), noise=noise, name=name)
        except TypeError as error:
            raise SettingsError(f"method {name!r}: {error}") from None

    def settings(self) -> dict:
        return {**dataclasses.asdict(self.unlearn), "noise": self.noise}

    def prepare_overrides(self) -> dict:
        """What the work directory's PrepareSettings must say for this variant (beyond the defaults)."""
        overrides = {}
        if self.noise != "example":
            overrides["noise"] = self.noise
        if self.unlearn.group != "kv" and self.unlearn.precondition:
            overrides["fisher_group"] = self.unlearn.group
        return overrides

    def score(self, attributor, queries) -> np.ndarray:
        return self.attribute(attributor, queries).scores

    def attribute(self, attributor, queries) -> Attribution:
        prepared = attributor.settings.scoring.noise
        if prepared != self.noise:
            raise SettingsError(f"{self.name} scores with noise {self.noise!r}, the work directory "
                                f"{attributor.store.path} was prepared with {prepared!r} (prepare --noise "
                                f"{self.noise} in another folder)")
        # The Attributor caches each query itself (unlearned weights, losses after, scores): records point there.
        return attributor.attribute(list(queries), self.unlearn)
