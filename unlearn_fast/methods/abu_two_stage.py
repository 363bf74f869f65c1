"""Two-stage AbU: a linearised AbU ranks every training image cheaply, then exact AbU re-ranks the top C (issue 16).

    stage 1 (prepared once per work directory and settings):   ψ_n = P · (F^(-1/2) ⊙ ∇θ L̄_n)   per caption row
    stage 1 (per query):   ψ(ẑ) = P · (F^(-1/2) ⊙ ĝ),   τ¹(z) = s · mean over z's caption rows of ψ(ẑ)·ψ_n
    stage 2 (per query):   unlearn as exact AbU does, rescore only the caption rows of the C images with the largest τ¹

METHOD.md §6: one small step gives τ(z) ≈ s · ∇L̄(z)ᵀ F⁻¹ ĝ, a Fisher-preconditioned gradient dot product; with F⁻¹ split
as F^(-1/2)·F^(-1/2) and a sparse JL projection P (projector.SparseProjector) on each side it is a (dim,) dot product.
L̄_n is the row's mean loss over the work directory's scoring grid with the scoring pass's noise
(engine/projected_gradients.py) and ĝ is engine.unlearn.query_gradient (unlearning's own first ĝ), so stage 1
linearises exactly what stage 2 measures. s is the step's scale (α/N, α for "fixed", 1 for "rise": units only). The
mean loss over both flips stands in for the exact score's max over flips: stage 1 only has to choose candidates.
Ψ is a chunked float16 array in the work directory (resumable, split over the ranks); a query costs one ĝ and one
matrix-vector product over it.

Scores (Q, N): a candidate's is its exact AbU score (the raw rule), bit for bit what attribute_by_unlearning gives
(C = N reproduces it). A non-candidate ranks after every candidate, in stage-1 order: the k-th non-candidate by τ¹
(0-based, ties by index) scores lo − w · (1 + k / (N − C)), lo and w the candidates' lowest exact score and the
spread of their scores (so its value says nothing but its rank; distinct in float32 below 2^23 non-candidates).
Each record says which images are exact (candidates-c<C>.npy in its folder) and the candidate count.

Each query has its own folder, queries/<the exact AbU folder's name>-two-stage-<stage-1 key>/, never the exact one's:
its unlearned weights (the same numbers as the exact folder's: unlearning is seeded), its stage-1 scores, and per C
its candidates and scores, so a resumed run repeats nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..attribution import Attribution
from ..engine.projected_gradients import check_linear, projected_gradients
from ..engine.scoring import NOISE_KEYS
from ..engine.unlearn import UnlearnSettings, query_gradient
from ..errors import SettingsError
from ..query import Query
from ..score_rules import loss_change_scores
from ..workspace import Workspace, numeric_settings, rows_of
from .abu import SCORE_ONLY, _unlearned_weights, check_unlearning, query_folder
from .base import AttributionMethod
from .projector import SparseProjector

_PRODUCT_ROWS = 65536  # feature rows read (and widened to float32) at a time: memory only


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


def step_scale(settings: UnlearnSettings, num_train: int) -> float:
    """s of the first-order expansion: the step's scale (1 where it is found by a line search)."""
    if settings.step == "alpha/N":
        return settings.alpha / (settings.num_train or num_train)
    return settings.alpha if settings.step == "fixed" else 1.0


@dataclass
class TwoStageAbU(AttributionMethod):
    """unlearn: exact AbU's settings (stage 2; raw score rule, diagonal Fisher). candidates: C, a count or a share
    ("5%"). dim, projection_seed: stage 1's projection. noise: the scoring noise key the work directory must have."""

    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    candidates: int | float | str = "10%"
    dim: int = 4096
    projection_seed: int = 0
    noise: str = "example"
    name: str = "abu-two-stage"

    def __post_init__(self):
        parse_candidates(self.candidates)
        if not isinstance(self.dim, int) or self.dim < 1:
            raise SettingsError(f"two-stage dim must be an integer >= 1, got {self.dim!r}")
        if self.noise not in NOISE_KEYS:
            raise SettingsError(f"noise must be one of {NOISE_KEYS}, got {self.noise!r}")
        if self.unlearn.score != "raw":
            raise SettingsError(f"the two-stage AbU re-ranks with the raw score rule, got score {self.unlearn.score!r}")
        if self.unlearn.curvature != "diagonal":
            raise SettingsError(f"the two-stage AbU's stage 1 uses the diagonal Fisher, got curvature "
                                f"{self.unlearn.curvature!r}")

    def settings(self) -> dict:
        return {**dataclasses.asdict(self.unlearn), "noise": self.noise, "candidates": str(self.candidates),
                "dim": self.dim, "projection_seed": self.projection_seed}

    def prepare_overrides(self) -> dict:
        overrides = {} if self.noise == "example" else {"noise": self.noise}
        if self.unlearn.group != "kv" and self.unlearn.precondition:
            overrides["fisher_group"] = self.unlearn.group
        return overrides

    # ------------------------------------------------------------------------------------------------ stage 1
    @property
    def stage1_key(self) -> str:
        """What changes Ψ beyond the work directory's own binding (its scoring grid, Fisher, model and data)."""
        numbers = {"dim": self.dim, "seed": self.projection_seed, "group": self.unlearn.group,
                   "precondition": self.unlearn.precondition}
        return hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()[:8]

    def _parts(self, workspace: Workspace):
        """(params, projector, scale {name: F^(-1/2)} or None), once per Workspace."""
        def make():
            model = workspace.model
            params = model.parameter_group(self.unlearn.group)
            check_linear(model.unet, params)
            scale = ({n: workspace.fisher[n].to(model.device, torch.float64).rsqrt().float() for n in params}
                     if self.unlearn.precondition else None)
            return params, SparseProjector(params, self.dim, self.projection_seed), scale
        return workspace.cached(f"two-stage-{self.stage1_key}", make)

    def row_features(self, workspace: Workspace) -> np.ndarray:
        """Ψ (R, dim) float16, one row per caption row: a chunked array in the work directory."""
        params, projector, scale = self._parts(workspace)
        model, grid, rows = workspace.model, workspace.settings.scoring, workspace.caption_rows
        latents, conditioning = workspace.latents, workspace.conditioning
        per_row = len(grid.timestep_values(model.num_timesteps)) * (2 if grid.flips else 1)
        batch = max(1, grid.batch_size // per_row)  # as many UNet rows per backward as the scoring pass runs

        def compute(start, stop):
            out = []
            for first in range(start, stop, batch):
                ids = rows[first:min(first + batch, stop)]
                out.append(projected_gradients(
                    model, params, projector, scale, rows_of(latents, ids).to(model.device),
                    rows_of(conditioning, slice(first, first + len(ids))).to(model.device),
                    torch.as_tensor(ids, device=model.device), grid).float().cpu())
            return torch.cat(out)
        return workspace.cached(f"two-stage-features-{self.stage1_key}", lambda: workspace.chunked_pass(
            f"stage1/{self.stage1_key}/row_features", (len(rows), self.dim), compute, dtype="float16"))

    def query_vector(self, workspace: Workspace, query: Query) -> np.ndarray:
        """ψ(ẑ) (dim,) float32: the projected, preconditioned ĝ of unlearning's first step."""
        params, projector, scale = self._parts(workspace)
        model = workspace.model
        g = query_gradient(model, model.unet, params, model.encode_images(query.image[None]),
                           model.encode_text([query.prompt]), self.unlearn, step=0)
        if scale is not None:
            g = {n: v * scale[n].double() for n, v in g.items()}
        return projector.project(g).float().cpu().numpy()

    def stage1_scores(self, workspace: Workspace, vectors: np.ndarray) -> np.ndarray:
        """τ¹ (Q, N) float32 for query vectors (Q, dim): Ψ·ψ per caption row, × s, averaged over an image's rows."""
        features, rows, n = self.row_features(workspace), workspace.caption_rows, len(workspace.dataset)
        per_row = product(features, vectors)  # (R, Q)
        total = np.zeros((n, len(vectors)))
        np.add.at(total, rows, per_row.astype(np.float64))
        counts = np.bincount(rows, minlength=n)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (step_scale(self.unlearn, n) * total / counts).T.astype(np.float32)

    # ------------------------------------------------------------------------------------------- the queries
    def score(self, workspace: Workspace, queries) -> np.ndarray:
        return self.attribute(workspace, queries).scores

    def folder(self, query: Query) -> str:
        return f"{query_folder(query, self.unlearn)}-two-stage-{self.stage1_key}"

    def attribute(self, workspace: Workspace, queries) -> Attribution:
        queries = [queries] if isinstance(queries, Query) else list(queries)
        prepared = workspace.settings.scoring.noise
        if prepared != self.noise:
            raise SettingsError(f"{self.name} scores with noise {self.noise!r}, the work directory "
                                f"{workspace.store.path} was prepared with {prepared!r}")
        check_unlearning(workspace, self.unlearn)
        check_linear(workspace.model.unet, workspace.model.parameter_group(self.unlearn.group))
        with workspace.locked():
            workspace.prepare()
            self.row_features(workspace)  # the stage-1 pass, once per work directory
            records = [self._attribute_one(workspace, query) for query in queries]
        scores = np.stack([workspace.store.load_npy(record["scores"]) for record in records])
        return Attribution(scores=scores, queries=queries, records=records, dataset=workspace.dataset,
                           work_dir=str(workspace.store.path), timings=dict(workspace.timings))

    def _attribute_one(self, workspace: Workspace, query: Query) -> dict:
        store, n = workspace.store, len(workspace.dataset)
        count, folder = candidate_count(self.candidates, n), self.folder(query)
        name = f"{folder}/scores-c{count}"
        if store.exists(f"{folder}/query-c{count}", ".json") and store.exists(name, ".npy"):
            return store.load_json(f"{folder}/query-c{count}")
        record = {"folder": folder, "prompt": query.prompt, "source": query.source, "generation": query.generation,
                  "method": self.name, "unlearn": numeric_settings(self.unlearn, SCORE_ONLY), "scores": name}
        timings = {}
        started = time.perf_counter()
        if not store.exists(f"{folder}/stage1", ".npy"):
            stage1 = self.stage1_scores(workspace, self.query_vector(workspace, query)[None])[0]
            workspace.on_main(lambda: store.save_npy(f"{folder}/stage1", stage1))
        stage1 = store.load_npy(f"{folder}/stage1")
        candidates = np.sort(ranking(stage1)[:count])
        timings["stage1"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        weights = _unlearned_weights(workspace, query, self.unlearn, folder, record)
        timings["unlearn"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        rows = workspace.caption_rows
        picked = np.flatnonzero(np.isin(rows, candidates))  # every caption row of every candidate, in order
        after = workspace.losses_of_rows(weights, picked)
        exact = loss_change_scores(np.asarray(workspace.base_losses[picked]), after, rows[picked], n)
        timings["rescore"] = round(time.perf_counter() - started, 3)
        scores = combine(exact, stage1, candidates)
        record.update(two_stage={"candidates": count, "num_train": n, "stage1": self.stage1_key,
                                 "dim": self.dim, "exact_rows": int(len(picked)),
                                 "exact": f"{folder}/candidates-c{count}.npy",
                                 "rule": "candidates: exact AbU; the rest after them in stage-1 order"},
                      timings_s=timings)

        def write():
            store.save_npy(f"{folder}/candidates-c{count}", candidates)
            store.save_npy(name, scores)
            store.save_json(f"{folder}/query-c{count}", record)
        workspace.on_main(write)
        return record


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, ties by index, NaN last (as Attribution.order ranks)."""
    keyed = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.arange(len(scores)), np.isnan(scores), -keyed))


def combine(exact: np.ndarray, stage1: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(N,) float32: exact scores at the candidates; below them, the rest in stage-1 order (module docstring)."""
    scores = np.array(exact, np.float64)
    others = np.setdiff1d(np.arange(len(stage1)), candidates)
    if len(others):
        known = scores[candidates][np.isfinite(scores[candidates])]
        low = float(known.min()) if len(known) else 0.0
        spread = max(float(known.max()) - low if len(known) else 0.0, abs(low), 1e-30)
        order = others[ranking(stage1[others])]
        scores[order] = low - spread * (1 + np.arange(len(order)) / len(order))
    return scores.astype(np.float32)


def product(features: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """features (R, dim) float16 (a memmap: read a block at a time) times vectors (Q, dim): (R, Q) float32."""
    weights = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).T
    out = torch.empty(len(features), len(vectors), dtype=torch.float32)
    for start in range(0, len(features), _PRODUCT_ROWS):
        block = torch.from_numpy(np.asarray(features[start:start + _PRODUCT_ROWS]))
        torch.mm(block.float(), weights, out=out[start:start + len(block)])
    return out.numpy()
