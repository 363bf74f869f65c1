"""Linearised AbU: the first-order form of one unlearning step, precomputed per training image (stage 1 of the
two-stage AbU, and a method of its own).

METHOD.md §6: one small step θ ← θ + s F⁻¹ĝ raises a training row's loss by  τ(z) ≈ s · ∇L̄(z)ᵀ F⁻¹ ĝ.  With F⁻¹ split
as F^(-1/2)·F^(-1/2) and a sparse JL projection P (projector.SparseProjector) on each side it becomes a (dim,) dot
product:

    prepared once per work directory:   ψ_n = P · (F^(-1/2) ⊙ ∇θ L̄_n)   per caption row n (engine/projected_gradients)
    per query:                          ψ(ẑ) = P · (F^(-1/2) ⊙ ĝ),   τ¹(z) = s · mean over z's caption rows of ψ(ẑ)·ψ_n

L̄_n is the row's mean loss over the work directory's scoring grid with the scoring pass's own noise, and ĝ is
engine.unlearn.query_gradient (unlearning's first ĝ, in the query's region when it has a mask), so τ¹ linearises what
the exact rescoring measures. s is the step's scale (α/N, the fixed size, 1 for the loss-rise rule: units only). The exact score
takes the larger of an image's two flips: flips="max" keeps one ψ per row and flip (L̄ over the timesteps) and takes
the larger τ¹ likewise; flips="mean" keeps one per row (L̄ over both flips; half the bytes). Ψ (R, F, dim) is a
chunked float16 array in the work directory (resumable, split over the ranks): a query costs one ĝ and one
matrix-vector product over Ψ.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from ...engine.projected_gradients import check_linear, projected_gradients
from ...engine.unlearn import UnlearnSettings, query_gradient
from ...errors import SettingsError
from ...query import Query
from ...workspace import Workspace, rows_of
from .artefacts import fit_fisher
from .method import abu_overrides, check_preparation, check_unlearning, query_inputs
from ..base import AttributionMethod, check_prepared
from ..projector import SparseProjector, feature_product

FLIPS = ("max", "mean")  # per row and flip, the larger τ¹ (as the exact score); or one feature per row


def step_scale(settings: UnlearnSettings, num_train: int) -> float:
    """s of the first-order expansion: the step's scale (1 where a line search finds it)."""
    scale = settings.step.scale(settings.num_train or num_train)
    return 1.0 if scale is None else scale


def mean_per_image(per_row: np.ndarray, rows: np.ndarray, num_images: int) -> np.ndarray:
    """(Q, num_images) float64: per_row (R, F, Q) averaged over each image's caption rows (NaN for an image without),
    then the larger of the F flips."""
    counts = np.bincount(rows, minlength=num_images)
    per_row = np.asarray(per_row, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([np.max([np.bincount(rows, weights=per_row[:, f, q], minlength=num_images) / counts
                                 for f in range(per_row.shape[1])], axis=0) for q in range(per_row.shape[2])])


@dataclass
class LinearisedAbU(AttributionMethod):
    """unlearn: the AbU settings being linearised (group, preconditioning, step rule, the query's draws); dim,
    projection_seed: the projection; preparation: what the work directory must be prepared with (AbU.preparation)."""

    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    dim: int = 4096
    projection_seed: int = 0
    preparation: dict = field(default_factory=dict)
    flips: str = "max"
    name: str = "abu-linear"
    title = "AbU, linearised"
    score_meaning = "first-order estimate of the loss rise under the unlearning step (projected gradients)"

    def __post_init__(self):
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise SettingsError(f"{self.name}: dim must be an integer >= 1, got {self.dim!r}")
        check_preparation(self.name, self.preparation)
        if self.flips not in FLIPS:
            raise SettingsError(f"{self.name}: flips must be one of {FLIPS}, got {self.flips!r}")
        if self.unlearn.curvature != "diagonal":
            raise SettingsError(f"{self.name} preconditions with the diagonal Fisher, got curvature "
                                f"{self.unlearn.curvature!r}")

    def settings(self) -> dict:
        return {**self.unlearn.as_record(), **self.preparation, "dim": self.dim,
                "projection_seed": self.projection_seed, "flips": self.flips}

    def prepare_overrides(self) -> dict:
        return abu_overrides(self.preparation, self.unlearn)

    @property
    def features_key(self) -> str:
        """What changes Ψ beyond the work directory's own binding (its scoring grid, Fisher, model and data)."""
        numbers = {"dim": self.dim, "seed": self.projection_seed, "group": self.unlearn.group,
                   "precondition": self.unlearn.precondition, "flips": self.flips}
        return hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()[:8]

    def prepare(self, workspace: Workspace) -> None:
        if self.unlearn.precondition:  # Ψ is scaled by F^(-1/2); it reads no base losses
            workspace.once("fisher", lambda: fit_fisher(workspace))

    def check(self, workspace: Workspace) -> None:
        """Before any work: the noise the work directory was prepared with, the Fisher's group, Linear layers only."""
        check_prepared(workspace, self.name, self.preparation)
        check_unlearning(workspace, self.unlearn)
        check_linear(workspace.model.unet, workspace.model.parameter_group(self.unlearn.group))

    def _parts(self, workspace: Workspace):
        """(params, projector, scale {name: F^(-1/2)} or None), once per Workspace."""
        def make():
            model = workspace.model
            params = model.parameter_group(self.unlearn.group)
            scale = ({n: fit_fisher(workspace)[n].to(model.device, torch.float64).rsqrt().float() for n in params}
                     if self.unlearn.precondition else None)
            return params, SparseProjector(params, self.dim, self.projection_seed), scale
        return workspace.cached(f"abu-linear-{self.features_key}", make)

    def row_features(self, workspace: Workspace) -> np.ndarray:
        """Ψ (R, F, dim) float16 per caption row and flip (F = 1 for flips="mean" or a grid without flips): a chunked
        array of the work directory (resumable)."""
        params, projector, scale = self._parts(workspace)
        model, grid, rows = workspace.model, workspace.settings.scoring, workspace.caption_rows
        per_flip = self.flips == "max" and grid.flips
        per_row = len(grid.timestep_values(model.num_timesteps)) * (2 if grid.flips else 1)
        batch = max(1, grid.batch_size // per_row)  # as many UNet rows per backward as the scoring pass runs

        def compute(start, stop):
            out = []
            for first in range(start, stop, batch):
                last = min(first + batch, stop)
                ids = rows[first:last]
                out.append(projected_gradients(
                    model, params, projector, scale, rows_of(workspace.latents, ids).to(model.device),
                    rows_of(workspace.conditioning, slice(first, last)).to(model.device),
                    torch.as_tensor(ids, device=model.device), grid, per_flip=per_flip).float().cpu())
            return torch.cat(out).reshape(stop - start, -1, self.dim)
        shape = (len(rows), 2 if per_flip else 1, self.dim)
        return workspace.cached(f"abu-linear-features-{self.features_key}", lambda: workspace.chunked_pass(
            f"linear/{self.features_key}/row_features", shape, compute, dtype="float16"))

    def query_vector(self, workspace: Workspace, query: Query) -> np.ndarray:
        """ψ(ẑ) (dim,) float32: the projected, preconditioned ĝ of unlearning's first step."""
        params, projector, scale = self._parts(workspace)
        model = workspace.model
        x0, cond, weight = query_inputs(model, query)
        g = query_gradient(model, model.unet, params, x0, cond, self.unlearn, step=0, weight=weight)
        if scale is not None:
            g = {n: v * scale[n].double() for n, v in g.items()}
        return projector.project(g).float().cpu().numpy()

    def scores_of_vectors(self, workspace: Workspace, vectors: np.ndarray) -> np.ndarray:
        """τ¹ (Q, N) float32 for query vectors (Q, dim)."""
        n, features = len(workspace.dataset), self.row_features(workspace)
        per_row = feature_product(features.reshape(-1, self.dim), vectors).reshape(*features.shape[:2], -1)
        return (step_scale(self.unlearn, n) * mean_per_image(per_row, workspace.caption_rows, n)).astype(np.float32)

    def score(self, workspace: Workspace, queries) -> np.ndarray:
        queries = [queries] if isinstance(queries, Query) else list(queries)
        self.check(workspace)
        with workspace.locked():  # only what it reads (latents, text, Fisher, Ψ), not the base losses
            workspace.phase("linear features", lambda: self.row_features(workspace))
            vectors = np.stack([self.query_vector(workspace, query) for query in queries])
            return self.scores_of_vectors(workspace, vectors)
