"""One interface for every attribution method, so AbU and its baselines are judged by the same harness and report.

A method turns queries into scores of shape (queries, N) over the training set: higher = more responsible. It reads the
training set through a Workspace (its model, data set and work directory, where latents and text embeddings are
computed once and shared by every method), and its scores are cached there under ``methods/<name>-<settings hash>/``,
so a second call (or a resumed evaluation) reads them back. Under torchrun every rank calls score() (its long passes
are split over the ranks); rank 0 writes the cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from abc import ABC, abstractmethod

import numpy as np

from ..attribution import Attribution
from ..errors import SettingsError
from ..query import Query
from ..workspace import Workspace


class AttributionMethod(ABC):
    """name: short and stable (tables, file names). title, score_meaning: what a report calls the method and what its
    score says, so a reader never takes one method's number for another's. settings(): everything that changes the
    numbers."""

    name: str = "method"
    title = "an attribution method"
    score_meaning = "higher: more responsible for the query"

    def settings(self) -> dict:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    @property
    def key(self) -> str:
        numbers = json.dumps(self.settings(), sort_keys=True, default=str).encode()
        return f"{self.name}-{hashlib.sha256(numbers).hexdigest()[:8]}"

    def prepare_overrides(self) -> dict:
        """PrepareSettings fields the work directory must have for this method ({} = any work directory)."""
        return {}

    def prepare(self, workspace: Workspace) -> None:
        """Compute (or resume) what this method reads from the work directory beyond the Workspace's shared artefacts
        (Workspace.prepare calls it, on every rank); default: nothing."""

    def check(self, workspace: Workspace) -> None:
        """Refuse, before any work, settings this work directory cannot serve (SettingsError); default: a work
        directory prepared otherwise than prepare_overrides() asks (check_prepared)."""
        check_prepared(workspace, self.name, self.prepare_overrides())

    @abstractmethod
    def score(self, workspace: Workspace, queries: list[Query]) -> np.ndarray:
        """(len(queries), N) float32 scores."""

    def attribute(self, workspace: Workspace, queries: list[Query]) -> Attribution:
        """The scores as an Attribution, cached per query under methods/<key>/. A method that keeps its own per-query
        artefacts (AbU: its query folders) overrides this, so nothing is stored twice."""
        return _cached_attribution(self, workspace, queries)


def check_prepared(workspace: Workspace, method: str, needs: dict) -> None:
    """A SettingsError, before any work, when the work directory was prepared with another scoring noise key than
    `needs` (PrepareSettings overrides) names. The noise itself is the work directory's (its PrepareSettings): methods
    read it there. The Fisher's group is checked by the unlearning, which may use a subset of it."""
    noise, prepared = needs.get("noise"), workspace.settings.scoring.noise
    if noise is not None and noise != prepared:
        raise SettingsError(f"{method} scores with noise {noise!r}, the work directory {workspace.store.path} was "
                            f"prepared with {prepared!r} (prepare --noise {noise} in another folder)")


def run_method(method: AttributionMethod, workspace: Workspace, queries: list[Query] | Query) -> Attribution:
    """Scores of `method` for `queries` as an Attribution (the same outputs and report as AbU's); cached per query.
    workspace: a Workspace, or anything that has one (the Attributor facade). Its records name the method."""
    workspace = getattr(workspace, "workspace", workspace)
    return labelled(method.attribute(workspace, [queries] if isinstance(queries, Query) else list(queries)), method)


def method_label(method: AttributionMethod) -> dict:
    """What a report shows of a method: its name, its title and what its score means."""
    return {"method": method.name, "method_title": method.title, "score_meaning": method.score_meaning}


def labelled(attribution: Attribution, method: AttributionMethod) -> Attribution:
    """The attribution with each record naming the method that scored it (the report's column heads, the index)."""
    attribution.records = [{**record, **method_label(method)} for record in attribution.records]
    return attribution


def _cached_attribution(method: AttributionMethod, workspace: Workspace, queries: list[Query]) -> Attribution:
    store, n = workspace.store, len(workspace.dataset)
    folder = f"methods/{method.key}"
    missing = [q for q in queries if not store.exists(f"{folder}/{q.key}", ".npy")]
    started = time.perf_counter()
    if missing:
        workspace.prepare([method])
        fresh = np.asarray(method.score(workspace, missing), dtype=np.float32)
        if fresh.shape != (len(missing), n):
            raise ValueError(f"method {method.name} returned scores of shape {fresh.shape}, expected "
                             f"({len(missing)}, {n})")

        def write():
            for query, row in zip(missing, fresh):
                store.save_npy(f"{folder}/{query.key}", row)
            store.save_json(f"{folder}/method", {"name": method.name, "settings": method.settings()})
        workspace.on_main(write)
    scores = np.stack([store.load_npy(f"{folder}/{q.key}") for q in queries])
    records = [{"folder": folder, "query": q.key, "prompt": q.prompt, "source": q.source, "generation": q.generation,
                "method": method.name, "settings": method.settings()} for q in queries]
    return Attribution(scores=scores, queries=queries, records=records, dataset=workspace.dataset,
                       work_dir=str(store.path), timings={method.name: round(time.perf_counter() - started, 3)},
                       data_fingerprint=workspace.data_fingerprint())
