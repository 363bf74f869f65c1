"""AbU's named recipes and variants: each a set of UnlearnSettings fields (and the scoring noise key) that differ from
the paper's recipe, so every harness and table can ask for one by name.

"abu" is the package's default (DEFAULT), "abu-paper" the recipe of Wang et al. (NeurIPS 2024) as this package ran it
before issue 13 (raw score, step α/N, one step, cross-attention K/V, noise keyed per example); the others change one
thing each.
"""
from __future__ import annotations

# The paper's recipe: UnlearnSettings' defaults with noise keyed per example.
PAPER = {}
# The package's default, chosen by LDS on the LDS run's validation queries among the measured variants, each at its
# own validated α (benchmarks/README.md, "Choosing AbU's default"): the paper's step with scoring noise shared by
# every image at a timestep, α = 0.003. Chosen at N = 400, it does not carry to other N: the step α/N shrinks with N,
# and on same-domain planted copies it finds an easy plant at N = 200 but loses them at N ≈ 1,000 and N = 3,943.
DEFAULT = {"noise": "shared", "alpha": 0.003}

# name -> settings that differ from the paper's recipe ("noise" is the work directory's scoring noise key).
VARIANTS = {
    "abu": DEFAULT,
    "abu-paper": PAPER,
    "abu-normalised": {"score": "normalised"},
    "abu-calibrated": {"score": "calibrated"},
    "abu-calibrated-spread": {"score": "calibrated", "spread": True},
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
