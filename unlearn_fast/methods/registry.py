"""Methods by name, as the CLI and the evaluation harness ask for them."""
from __future__ import annotations

from ..errors import SettingsError
from .abu.method import AbU
from .abu.linear import LinearisedAbU
from .abu.recipes import VARIANTS
from .abu.two_stage import TwoStageAbU
from .latent_similarity import LatentCosine
from .rank_union import RankUnion
from .base import AttributionMethod
from .dtrak import GradientKernel
from .pixel import PixelCosine
from .random_ranking import RandomRanking

METHODS = ("abu", "abu-two-stage", "abu-linear", "dtrak", "trak", "pixel", "latent", "feature", "random")  # and every AbU
# variant (abu.VARIANTS)
STAGED = ("abu-two-stage", "abu-linear")  # the default AbU's two-stage form and its first stage alone
# D-TRAK with noise shared by every image at a timestep: what the same change does to a gradient method.
SHARED_NOISE = {"dtrak-shared-noise": "sqnorm", "trak-shared-noise": "loss"}


def build_method(name: str, encoder: str | None = None, **options) -> AttributionMethod:
    """name: one of METHODS or an AbU variant (abu.VARIANTS), optionally with "@LABEL" (the same method under
    another name, so one evaluation can hold it at several settings: abu@small, abu@large); encoder: the local
    encoder folder "feature" needs; options: the method's settings."""
    name = name.partition("@")[0]
    if name in STAGED:
        return _staged(name, **options)
    if name in VARIANTS:
        return AbU.variant(name, **options)
    try:
        if name in ("dtrak", "trak"):
            return GradientKernel(output="sqnorm" if name == "dtrak" else "loss", **options)
        if name in SHARED_NOISE:
            return GradientKernel(output=SHARED_NOISE[name], **{"noise": "shared", **options})
        if name == "pixel":
            return PixelCosine(**options)
        if name == "latent":
            return LatentCosine(**options)
        if name == "random":
            return RandomRanking(**options)
    except TypeError as error:
        raise SettingsError(f"method {name!r}: {error}") from None
    if name == "feature":
        if not encoder:
            raise SettingsError("method 'feature' needs an encoder folder (CLIP or DINO saved with transformers)")
        from .feature import FeatureSimilarity

        return FeatureSimilarity(encoder=encoder, **options)
    raise SettingsError(f"unknown method {name!r}; choose from {', '.join(METHODS)} or an AbU variant "
                        f"({', '.join(v for v in VARIANTS if v != 'abu')})")


def methods_to_compare(methods, encoder: str | None = None, abu: AttributionMethod | None = None
                       ) -> dict[str, AttributionMethod]:
    """{name: method} for a comparison: names built (so an unknown name or a missing encoder folder is a SettingsError
    now, before any work), AttributionMethod objects kept, "abu" as `abu` (default: the default AbU); a name given
    twice is refused."""
    built = {}
    for method in methods:
        name = method if isinstance(method, str) else method.name
        if name in built:
            raise SettingsError(f"method {name!r} is named twice in the comparison")
        if not isinstance(method, str):
            built[name] = method
        elif name == "abu":
            built[name] = abu or AbU()
        else:
            built[name] = build_method(name, encoder=encoder)
            built[name].settings()  # reads what its settings name (feature: the encoder folder)
    return built


def _staged(name: str, candidates="25%", front: str = "linear+latent", dim: int = 4096, projection_seed: int = 0,
            flips: str = "max", **options) -> AttributionMethod:
    """abu-two-stage (candidates: C, a count or a share; front: its first stage, FRONTS joined by "+") or abu-linear
    (stage 1's linearisation alone), both over the default AbU with `options` (UnlearnSettings fields or noise) on top;
    dim, projection_seed, flips: the linearisation's (methods/abu/linear.py)."""
    abu = AbU.variant("abu", **options)
    linear = LinearisedAbU(abu.unlearn, dim=dim, projection_seed=projection_seed, preparation=abu.preparation, flips=flips)
    if name == "abu-linear":
        return linear
    makers = {"linear": lambda: linear, "latent": LatentCosine, "pixel": PixelCosine}
    names = str(front).split("+")
    unknown = [part for part in names if part not in makers]
    if unknown:
        raise SettingsError(f"two-stage front {front!r}: choose from {', '.join(makers)}, joined by '+'")
    fronts = tuple(makers[part]() for part in names)
    return TwoStageAbU.of(abu, candidates, front=fronts[0] if len(fronts) == 1 else RankUnion(fronts))
