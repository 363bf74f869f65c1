"""Attribution methods behind one interface (base.AttributionMethod): AbU and the baselines it is judged against.

Names are loaded on first use (PEP 562), so a light submodule (abu/recipes.py, which the command line reads to build
its flags) does not pull in torch through this package."""
from importlib import import_module

_HOMES = {"AbU": ".abu", "LinearisedAbU": ".abu", "TwoStageAbU": ".abu", "AttributionMethod": ".base",
          "run_method": ".base", "DTRAK": ".dtrak", "GradientKernel": ".dtrak", "TRAKLoss": ".dtrak",
          "PixelCosine": ".pixel", "RandomRanking": ".random_ranking", "METHODS": ".registry",
          "build_method": ".registry"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name], __name__), name)
