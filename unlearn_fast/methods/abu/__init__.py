"""Attribution by unlearning: the exact method (method.py), its recipes and variants (recipes.py), its linearisation
(linear.py) and the two-stage query that pairs them (two_stage.py)."""
from .linear import LinearisedAbU
from .method import AbU, attribute_by_unlearning
from .recipes import DEFAULT, PAPER, RECIPES, VARIANTS
from .two_stage import TwoStageAbU

__all__ = ["AbU", "DEFAULT", "LinearisedAbU", "PAPER", "RECIPES", "TwoStageAbU", "VARIANTS", "attribute_by_unlearning"]
