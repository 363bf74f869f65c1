"""Cosine similarity of the query's latent and each training image's latent, through a fixed sparse JL sketch: the
cheap nearest-neighbour front of the two-stage query (FastGDA takes its candidates from DINO neighbours alike).

Stage 1's first-order AbU score is blind to what exact AbU finds best: a memorised training image sits at a minimum
of its own loss, so its loss gradient is near 0 and its first-order rise with it, while the exact step raises its loss
(second order) above every other image's (benchmarks/README.md, "Two-stage queries"). Near copies of the query are
what a latent neighbour search finds. The sketch (N, dim) float16 is computed once per work directory from its
latents (a chunked array, resumable); a query costs its latent, its mirror's, and one product: the score is the larger
cosine of the two (the exact score takes the larger flip too). A query's mask is not applied here (the sketch is of
the whole latent): a region's answer comes from the exact stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ops.noisy_input_reference import mirrored
from ..query import Query
from ..workspace import Workspace, rows_of
from .base import AttributionMethod
from .projector import SparseProjector, feature_product


@dataclass
class LatentCosine(AttributionMethod):
    """dim, seed: the sketch's size and projection seed."""

    dim: int = 512
    seed: int = 0
    name: str = "latent"
    title = "Latent similarity"
    score_meaning = "cosine similarity of the VAE latents, through a fixed sketch (1: identical)"

    def _projector(self, workspace: Workspace) -> SparseProjector:
        shape = tuple(workspace.model.latent_shape)
        return workspace.cached(f"latent-projector-{self.key}",
                                lambda: SparseProjector({"latent": torch.Size(shape)}, self.dim, self.seed))

    def _sketch(self, projector: SparseProjector, latents: torch.Tensor) -> torch.Tensor:
        """Unit rows (B, dim) float32 of P · vec(latent)."""
        out = torch.zeros(len(latents), self.dim, dtype=torch.float64)
        projector.add_projection(out, "latent", latents.reshape(len(latents), -1).cpu())
        return torch.nn.functional.normalize(out, dim=1).float()

    def training_sketch(self, workspace: Workspace) -> np.ndarray:
        projector, latents = self._projector(workspace), workspace.latents
        return workspace.cached(f"latent-sketch-{self.key}", lambda: workspace.chunked_pass(
            f"latent_sketch/{self.key}/rows", (len(latents), self.dim),
            lambda start, stop: self._sketch(projector, rows_of(latents, slice(start, stop))), dtype="float16"))

    def score(self, workspace: Workspace, queries) -> np.ndarray:
        queries = [queries] if isinstance(queries, Query) else list(queries)
        model, projector = workspace.model, self._projector(workspace)
        rows = self.training_sketch(workspace)
        x0 = model.encode_images(np.stack([q.image for q in queries])).float().cpu()
        both = torch.cat([x0, mirrored(x0, torch.ones(len(x0), dtype=torch.int64))])  # the query and its mirror
        cosines = feature_product(rows, self._sketch(projector, both).numpy())  # (N, 2Q)
        return np.maximum(cosines[:, :len(queries)], cosines[:, len(queries):]).T.astype(np.float32)
