"""Methods by name, as the CLI and the evaluation harness ask for them."""
from __future__ import annotations

from ..errors import SettingsError
from ..unlearn import UnlearnSettings
from .abu import AbU
from .base import AttributionMethod
from .dtrak import GradientKernel
from .pixel import PixelCosine
from .random_ranking import RandomRanking

METHODS = ("abu", "dtrak", "trak", "pixel", "feature", "random")


def build_method(name: str, encoder: str | None = None, **options) -> AttributionMethod:
    """name: one of METHODS; encoder: the local encoder folder "feature" needs; options: the method's settings."""
    try:
        if name == "abu":
            return AbU(UnlearnSettings(**options))
        if name in ("dtrak", "trak"):
            return GradientKernel(output="sqnorm" if name == "dtrak" else "loss", **options)
        if name == "pixel":
            return PixelCosine(**options)
        if name == "random":
            return RandomRanking(**options)
    except TypeError as error:
        raise SettingsError(f"method {name!r}: {error}") from None
    if name == "feature":
        if not encoder:
            raise SettingsError("method 'feature' needs an encoder folder (CLIP or DINO saved with transformers)")
        from .feature import FeatureSimilarity

        return FeatureSimilarity(encoder=encoder, **options)
    raise SettingsError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
