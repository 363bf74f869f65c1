"""Two-stage AbU: a cheap first stage ranks every training image, exact AbU re-ranks the top C (FastGDA's plan, with
the first stage AbU's own linearisation instead of a network distilled per data set).

    stage 1:  the front's scores (N,) per query: by default AbU's linearisation (abu/linear.py: one ĝ and one product
              over precomputed projected gradients) united with a latent neighbour search (latent_similarity.py), as
              the linearisation misses memorised copies (rank_union.py); any AttributionMethod can stand in (D-TRAK,
              pixel, a distilled embedding)
    stage 2:  unlearn exactly as AbU does; rescore the caption rows of the C images the front ranks highest only
              (their base losses are the work directory's; Workspace.losses_of_rows)

Scores (Q, N) float32. A candidate's is its exact AbU score, the very number attribute_by_unlearning gives (C = N
reproduces it bit for bit). The other images rank after every candidate in the front's order: each scores its front
score shifted down so that the highest of them sits one candidate-spread below the lowest candidate (gaps in the
front's units kept, values meaningless in AbU's). Each record says the stage, the candidate count and where the list
of exact images is.

Per query, one folder beside the exact AbU one (queries/<the exact folder's name>-two-stage/): the query image, its
unlearned weights (the same numbers as the exact folder's: unlearning is seeded) and per (front, C) a subfolder with
the candidates, the scores and the record, so a resumed run repeats nothing.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ...attribution import Attribution
from ...engine.unlearn import UnlearnSettings
from ...errors import SettingsError
from ...query import Query
from ...score_rules import loss_change_scores
from ...workspace import Workspace
from .method import (abu_overrides, check_unlearning, query_folder, query_record, save_query,
                  unlearned_weights)
from .artefacts import fit_base_losses, prepare_abu
from .linear import LinearisedAbU
from ..base import AttributionMethod, check_prepared, labelled
from ..latent_similarity import LatentCosine
from ..rank_union import RankUnion
from ...ranking import ranking


# `--candidates auto` (benchmarks/README.md, "Two-stage queries"): the smallest share whose mean top-10 AND top-100
# overlap with the exact ranking reach 0.8 on the VALIDATION queries; exact below the size where the features pass
# (≈ 2.4 exact queries) and 0.3× per query pay back only after several queries, and an exact query is minutes on a CPU
AUTO_EXACT_BELOW = 20_000
AUTO_SHARE = 0.25


def parse_candidates(value) -> int | float:
    """A candidate count (int >= 1) or a share in (0, 1] from an int, "250", "5%" or a float share (SettingsError)."""
    error = SettingsError(f"candidates must be a count >= 1 or a share like 5% (0 < share <= 100%), got {value!r}")
    if isinstance(value, bool):
        raise error
    if isinstance(value, int):
        if value < 1:
            raise error
        return value
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise error
        return value
    text = str(value).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not (math.isfinite(share) and 0 < share <= 1):
                raise error
            return share
        count = int(text)
    except ValueError:
        raise error from None
    if count < 1:
        raise error
    return count


def candidate_count(candidates, num_train: int) -> int:
    """C for N = num_train: a count (capped at N) or ceil(share · N), at least 1."""
    spec = parse_candidates(candidates)
    count = spec if isinstance(spec, int) else math.ceil(spec * num_train)
    return max(1, min(num_train, count))


def resolve_candidates(value, num_train: int) -> int | None:
    """C for a query over num_train images, or None for the exact query: "auto" is exact below AUTO_EXACT_BELOW
    images and AUTO_SHARE of them above (benchmarks/README.md "Two-stage queries" measured both); a count or share
    that reaches every image is the exact query too (the same scores, without stage 1's pass)."""
    if value is None:
        return None
    if str(value).strip().lower() == "auto":
        return None if num_train < AUTO_EXACT_BELOW else candidate_count(AUTO_SHARE, num_train)
    count = candidate_count(value, num_train)
    return None if count >= num_train else count


def combine(exact: np.ndarray, front: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(N,) float32: `exact` at the candidates; the others below them in the front's order (module docstring)."""
    scores = np.array(exact, np.float64)
    others = np.setdiff1d(np.arange(len(front)), candidates)
    if len(others):
        known = scores[candidates][np.isfinite(scores[candidates])]
        low = float(known.min()) if len(known) else 0.0
        spread = max(float(known.max()) - low if len(known) else 0.0, abs(low), 1e-30)
        rest = np.asarray(front[others], np.float64)
        finite = np.isfinite(rest)
        top = float(rest[finite].max()) if finite.any() else 0.0
        shifted = low - spread - (top - rest)  # float32 may tie front scores closer than its precision
        scores[others] = np.where(finite, shifted, np.nan)
    return scores.astype(np.float32)


@dataclass
class TwoStageAbU(AttributionMethod):
    """unlearn, preparation: exact AbU's settings (stage 2; the raw score rule). candidates: C, a count or a share ("25%").
    front: stage 1 (None: LinearisedAbU of the same settings united with LatentCosine)."""

    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    candidates: int | float | str = "25%"
    preparation: dict = field(default_factory=dict)
    front: AttributionMethod | None = None
    name: str = "abu-two-stage"
    title = "AbU, two-stage"
    score_meaning = "the image's loss after − before unlearning the query, exact for the front's top candidates"

    def __post_init__(self):
        parse_candidates(self.candidates)
        if self.unlearn.score != "raw":
            raise SettingsError(f"the two-stage AbU re-ranks with the raw score rule, got score {self.unlearn.score!r}")
        if self.front is None:
            self.front = RankUnion((LinearisedAbU(self.unlearn, preparation=self.preparation), LatentCosine()))

    @classmethod
    def of(cls, abu, candidates, front: AttributionMethod | None = None) -> "TwoStageAbU":
        """The two-stage form of an AbU method (methods.AbU: its unlearning settings and preparation)."""
        return cls(abu.unlearn, candidates=candidates, preparation=abu.preparation, front=front)

    def settings(self) -> dict:
        return {**self.unlearn.as_record(), **self.preparation, "candidates": str(self.candidates),
                "front": self.front.key}

    def prepare_overrides(self) -> dict:
        return {**self.front.prepare_overrides(), **abu_overrides(self.preparation, self.unlearn)}

    def prepare(self, workspace: Workspace) -> None:
        prepare_abu(workspace)
        self.front.prepare(workspace)

    def check(self, workspace: Workspace) -> None:
        """Before any work (SettingsError): the preparation, the Fisher's group, and the front's own checks."""
        check_prepared(workspace, self.name, self.preparation)
        check_unlearning(workspace, self.unlearn)
        self.front.check(workspace)

    def score(self, workspace: Workspace, queries) -> np.ndarray:
        return self.attribute(workspace, queries).scores

    def folder(self, query: Query) -> str:
        return f"{query_folder(query, self.unlearn)}-two-stage"

    def attribute(self, workspace: Workspace, queries) -> Attribution:
        queries = [queries] if isinstance(queries, Query) else list(queries)
        self.check(workspace)
        with workspace.locked():
            workspace.prepare([self])
            records = [self._attribute_one(workspace, query) for query in queries]
        scores = np.stack([workspace.store.load_npy(f"{record['folder']}/scores") for record in records])
        return labelled(Attribution(scores=scores, queries=queries, records=records, dataset=workspace.dataset,
                                    work_dir=str(workspace.store.path), timings=dict(workspace.timings),
                                    data_fingerprint=workspace.data_fingerprint()), self)

    def _attribute_one(self, workspace: Workspace, query: Query) -> dict:
        store, n = workspace.store, len(workspace.dataset)
        count, folder = candidate_count(self.candidates, n), self.folder(query)
        results = f"{folder}/{self.front.key}-c{count}"
        if store.exists(f"{results}/query", ".json") and store.exists(f"{results}/scores", ".npy"):
            workspace.log(f"query {query.key}: two-stage scores already in {results}, reused")
            return store.load_json(f"{results}/query")
        record = query_record(query, folder, self.unlearn)
        workspace.on_main(lambda: save_query(store, folder, query, record))
        timings = {}
        started = time.perf_counter()
        front = self.front.attribute(workspace, [query]).scores[0]  # cached by the front (methods/ or its folder)
        candidates = np.sort(ranking(front)[:count])
        timings["stage1"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        weights = unlearned_weights(workspace, query, self.unlearn, folder, record)
        timings["unlearn"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        rows = workspace.caption_rows
        picked = np.flatnonzero(np.isin(rows, candidates))  # every caption row of every candidate, in order
        after = workspace.losses_of_rows(weights, picked)
        exact = loss_change_scores(np.asarray(fit_base_losses(workspace)[picked]), after, rows[picked], n)
        timings["rescore"] = round(time.perf_counter() - started, 3)
        workspace.log(f"query {query.key}: stage 1 {timings['stage1']:.1f} s, unlearn {timings['unlearn']:.1f} s, "
                      f"{len(picked)} caption rows of {count} candidates rescored in {timings['rescore']:.1f} s")
        record.update(folder=results, method=self.name, stage=f"two-stage: {self.front.name} ranks all {n}, exact "
                      f"AbU re-ranks the top {count}", candidates=f"{count} of {n} ({100 * count / n:.3g} %)",
                      two_stage={"candidates": count, "num_train": n, "front": self.front.key,
                                 "exact_rows": int(len(picked)), "exact": f"{results}/candidates.npy"},
                      timings_s=timings)
        scores = combine(exact, front, candidates)

        def write():
            store.save_npy(f"{results}/candidates", candidates)
            store.save_npy(f"{results}/scores", scores)
            store.save_json(f"{results}/query", record)
        workspace.on_main(write)
        return record
