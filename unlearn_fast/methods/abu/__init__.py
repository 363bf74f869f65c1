"""Attribution by unlearning: the exact method (method.py) and its artefacts as named phases (artefacts.py), its
recipes and variants (recipes.py), its linearisation (linear.py) and the two-stage query that pairs them
(two_stage.py). Names are loaded on first use, so recipes.py stays light for the command line."""
from ...lazy import lazy_names

_HOMES = {"AbU": ".method", "attribute_by_unlearning": ".method", "LinearisedAbU": ".linear",
          "TwoStageAbU": ".two_stage", "DEFAULT": ".recipes", "PAPER": ".recipes", "RECIPES": ".recipes",
          "VARIANTS": ".recipes"}

__all__ = sorted(_HOMES)

__getattr__ = lazy_names(__name__, _HOMES)
