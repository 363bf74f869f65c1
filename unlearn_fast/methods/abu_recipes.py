"""AbU's named recipes and variants: each a set of UnlearnSettings fields (and the scoring noise key) that differ from
the paper's recipe, so every harness and table can ask for one by name.

"abu" is the package's default (DEFAULT), "abu-paper" the recipe of Wang et al. (NeurIPS 2024) as this package ran it
before issue 13 (raw score, step α/N, one step, cross-attention K/V, noise keyed per example); the others change one
thing each.
"""
from __future__ import annotations

# The paper's recipe: UnlearnSettings' defaults with noise keyed per example.
PAPER = {}
# The package's default (benchmarks/README.md, "Choosing AbU's default" and "Is the default N-independent?"): scoring
# noise shared by every image at a timestep, chosen by LDS on the LDS run's validation queries (N = 400), and a fixed
# step s = 7.5e-6, the size α = 0.003 gives α/N at N = 400 (so LDS there is unchanged), chosen on validation plants
# at N = 200, 1,000 and 3,940: the step with the best mean top-R share among those validation LDS admits. α/N
# shrinks with N and lost the copies at N = 3,943; a fixed step found them at every size.
DEFAULT = {"noise": "shared", "step": "fixed", "alpha": 7.5e-6}

# name -> settings that differ from the paper's recipe ("noise" is the work directory's scoring noise key).
VARIANTS = {
    "abu": DEFAULT,
    "abu-paper": PAPER,
    "abu-normalised": {"score": "normalised"},
    "abu-calibrated": {"score": "calibrated"},
    "abu-calibrated-spread": {"score": "calibrated", "spread": True},
    "abu-sensitivity": {"score": "sensitivity"},
    # Where the model learned an image, not only what reads the caption: the image pathway, every denoiser weight, and
    # every weight with the score divided by the image's sensitivity. Fixed steps like the default (the rise rule
    # takes a tiny step on a memorised query, whose loss is small); the Fisher covers the group.
    "abu-image": {**DEFAULT, "group": "image"},
    "abu-all": {**DEFAULT, "group": "all"},
    "abu-all-sensitivity": {**DEFAULT, "group": "all", "score": "sensitivity"},
    "abu-all-normalised": {**DEFAULT, "group": "all", "score": "normalised"},
    "abu-all-layer-damped": {**DEFAULT, "group": "all", "curvature": "layer-damped"},
    "abu-rise": {"step": "rise"},
    "abu-fixed": {"noise": "shared", "step": "fixed"},
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


def recipe_group(recipe: str = "default") -> str:
    """The weights `recipe` unlearns, so the group a new work directory's Fisher covers."""
    return RECIPES[recipe].get("group", "kv")
