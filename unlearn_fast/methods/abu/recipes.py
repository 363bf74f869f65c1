"""AbU's named recipes and variants: each a set of UnlearnSettings fields (and the scoring noise key) that differ from
the dataclasses' defaults, which are the package's default, so every harness and table can ask for one by name.

"abu" is the package's default (DEFAULT), "abu-paper" the recipe of Wang et al. (NeurIPS 2024) as this package ran it
before issue 13 (raw score, step α/N, one step, cross-attention K/V, noise keyed per example); the others change one
or two things each.
"""
from __future__ import annotations

from ...engine.step_rules import AlphaOverN, FixedStep, LossRise

# The package's default IS the dataclasses' defaults (UnlearnSettings, LossGrid): scoring noise shared by every image
# at a timestep, chosen by LDS on the LDS run's validation queries (N = 400), and a fixed step (step_rules.FixedStep;
# benchmarks/README.md, "Choosing AbU's default" and "Is the default N-independent?"). Issue 28's validation winner over every weight lost
# the own-caption validation prompts to hub images, so K/V stays ("Issue 28" there).
DEFAULT: dict = {}
# The paper's recipe as this package ran it before issue 13: step α/N (step_rules.AlphaOverN), noise keyed per example.
PAPER = {"noise": "example", "step": AlphaOverN(0.1)}

# name -> settings that differ from the dataclasses' defaults ("noise" is the work directory's scoring noise key).
VARIANTS = {
    "abu": DEFAULT,
    "abu-paper": PAPER,
    "abu-normalised": {**PAPER, "score": "normalised"},
    "abu-calibrated": {**PAPER, "score": "calibrated"},
    "abu-calibrated-spread": {**PAPER, "score": "calibrated", "spread": True},
    "abu-sensitivity": {**PAPER, "score": "sensitivity"},
    # Where the model learned an image, not only what reads the caption: the image pathway, every denoiser weight, and
    # every weight with each score rule. Fixed steps like the default (the rise rule takes a tiny step on a memorised
    # query, whose loss is small); the Fisher covers the group.
    "abu-image": {**DEFAULT, "group": "image"},
    "abu-all": {**DEFAULT, "group": "all"},
    "abu-all-sensitivity": {**DEFAULT, "group": "all", "score": "sensitivity"},
    "abu-all-normalised": {**DEFAULT, "group": "all", "score": "normalised"},
    "abu-all-layer-damped": {**DEFAULT, "group": "all", "curvature": "layer-damped"},
    "abu-rise": {**PAPER, "step": LossRise(0.1)},
    "abu-fixed": {**PAPER, "noise": "shared", "step": FixedStep(0.1)},
    "abu-3steps": {**PAPER, "steps": 3, "draws": 200},
    "abu-attention": {**PAPER, "group": "attention"},
    "abu-shared-noise": {**PAPER, "noise": "shared"},
    "abu-cap": {**PAPER, "cap": True},
    "abu-retain": {**PAPER, "retain": 64},
    # Kronecker curvature changes the step's scale: with the rise rule, the step keeps its meaning across
    # preconditioners.
    "abu-kfac": {**PAPER, "curvature": "kfac", "step": LossRise(0.1)},
    "abu-ekfac": {**PAPER, "curvature": "ekfac", "step": LossRise(0.1)},
}

RECIPES = {"paper": PAPER, "default": DEFAULT}


def recipe_noise(recipe: str = "default") -> str:
    """The scoring noise key a work directory needs for `recipe` (RECIPES)."""
    from ...engine.loss_grid import LossGrid

    return RECIPES[recipe].get("noise", LossGrid.noise)


def recipe_group(recipe: str = "default") -> str:
    """The weights `recipe` unlearns, so the group a new work directory's Fisher covers."""
    from ...engine.unlearn_settings import UnlearnSettings

    return RECIPES[recipe].get("group", UnlearnSettings.group)
