"""Attribution methods behind one interface (base.AttributionMethod): AbU and the baselines it is judged against.

Names are loaded on first use (PEP 562), so a light submodule (abu/recipes.py, which the command line reads to build
its flags) does not pull in torch through this package."""
from ..lazy import lazy_names

_HOMES = {"AbU": ".abu", "LinearisedAbU": ".abu", "TwoStageAbU": ".abu", "AttributionMethod": ".base",
          "run_method": ".base", "DTRAK": ".dtrak", "GradientKernel": ".dtrak", "TRAKLoss": ".dtrak",
          "PixelCosine": ".pixel", "RandomRanking": ".random_ranking", "METHODS": ".registry",
          "build_method": ".registry"}

__all__ = sorted(_HOMES)

__getattr__ = lazy_names(__name__, _HOMES)
