"""Trust signals of an AbU answer (issue 28): is the ranking about this query, or about what every query gets, or about
the caption alone?

    specificity      1 − Spearman(the query's scores, the mean raw scores of the work directory's reference queries
                     under the same unlearning): near 0 says the ranking is mostly the query-independent one (hubs)
    caption_only     share of the query's top 10 that the same prompt recovers on an unrelated image
    image_only       share of the query's top 10 that the same image recovers under an unrelated prompt

The scores judged are the ones the user sees (their score rule); the controls are attributed with the same settings.
The reference queries are the calibrated score's (methods/abu.reference_queries: generations from training captions
drawn with a fixed seed, `settings.references` of them), unlearnt once per work directory and settings; the controls
unlearn two more queries per query. A high caption-only share with a low image-only share means the answer follows
the caption, not the image.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .engine.unlearn import UnlearnSettings
from .ranking import ranking, spearman
from .query import Query, query_from_array

TOP = 10


def _overlap(a: np.ndarray, b: np.ndarray, k: int = TOP) -> float:
    k = min(k, len(a))
    return len(set(ranking(a)[:k].tolist()) & set(ranking(b)[:k].tolist())) / k


def trust_signals(workspace, queries: list[Query], scores: np.ndarray, settings: UnlearnSettings,
                  controls: bool = False) -> list[dict]:
    """AbU's signals. Per query q (scores[q]: its scores as shown): {"specificity", "hub_correlation", "references"}
    and, with controls, {"caption_only", "image_only", "control_prompt"} (shares of the top 10)."""
    from .methods.abu import method as abu

    references = abu.reference_queries(workspace, settings.references)
    raw = dataclasses.replace(settings, score="raw", spread=False)
    mean_reference = abu.attribute_by_unlearning(workspace, references, raw).scores.mean(axis=0)
    return measured(workspace, queries, scores, references, mean_reference,
                    lambda asked: abu.attribute_by_unlearning(workspace, asked, settings).scores, controls)


def method_trust_signals(workspace, method, queries: list[Query], scores: np.ndarray, controls: bool = False,
                         references: int = UnlearnSettings.references) -> list[dict]:
    """The same signals for any method (methods.base.AttributionMethod): its own scores of the reference queries and
    of the controls, so each method of a comparison is judged by the same yardstick."""
    from .methods.abu import method as abu
    from .methods.base import run_method

    reference_queries = abu.reference_queries(workspace, references)

    def score(asked):
        return run_method(method, workspace, asked).scores
    return measured(workspace, queries, scores, reference_queries, score(reference_queries).mean(axis=0), score,
                    controls)


def measured(workspace, queries: list[Query], scores: np.ndarray, references: list[Query],
             mean_reference: np.ndarray, score, controls: bool) -> list[dict]:
    """The signals of `scores` (queries, N) given the reference queries' mean scores; score(list of queries) →
    their scores under the method judged (the controls)."""
    signals = []
    for query, own in zip(queries, np.asarray(scores)):
        correlation = spearman(own, mean_reference)
        signal = {"hub_correlation": round(float(correlation), 4),
                  "specificity": round(float(1.0 - correlation), 4), "references": len(references)}
        if controls:
            other = next(r for r in references if r.prompt != query.prompt)
            resolution = workspace.model.resolution
            caption_alone = query_from_array(other.image, query.prompt, resolution,
                                             source=f"control: the prompt on {other.source}")
            image_alone = query_from_array(query.image, other.prompt, resolution,
                                           source=f"control: the image under {other.prompt!r}")
            control = score([caption_alone, image_alone])
            signal.update(caption_only=_overlap(own, control[0]), image_only=_overlap(own, control[1]),
                          control_prompt=other.prompt)
        signals.append(signal)
    return signals


def with_trust(attribution, signals: list[dict]):
    """The attribution with each query's record holding its signals and their verdict (what reports show)."""
    attribution.records = [{**record, "trust": {**signal, "verdict": verdict(signal)}}
                           for record, signal in zip(attribution.records, signals)]
    return attribution


def verdict(signal: dict) -> str:
    """One sentence a user reads beside the ranking."""
    parts = []
    if signal["hub_correlation"] >= 0.7:
        parts.append(f"the ranking is mostly the one every query gets (correlation {signal['hub_correlation']:.2f} "
                     "with the reference queries' mean): read its top as hubs, not as this image's sources")
    if "caption_only" in signal:
        if signal["caption_only"] >= 0.5 and signal["image_only"] < signal["caption_only"]:
            parts.append(f"the prompt alone recovers {signal['caption_only']:.0%} of the top {TOP}, the image alone "
                         f"{signal['image_only']:.0%}: the answer follows the caption")
        elif signal["image_only"] >= 0.5:
            parts.append(f"the image alone recovers {signal['image_only']:.0%} of the top {TOP}: the answer follows "
                         "the image")
    return "; ".join(parts) or "no warning sign"
