"""Attribution methods behind one interface (base.AttributionMethod): AbU and the baselines it is judged against."""
from .abu import AbU, LinearisedAbU, TwoStageAbU
from .base import AttributionMethod, run_method
from .dtrak import DTRAK, GradientKernel, TRAKLoss
from .pixel import PixelCosine
from .random_ranking import RandomRanking
from .registry import METHODS, build_method

__all__ = ["AbU", "AttributionMethod", "DTRAK", "GradientKernel", "LinearisedAbU", "METHODS", "PixelCosine",
           "RandomRanking", "TRAKLoss", "TwoStageAbU", "build_method", "run_method"]
