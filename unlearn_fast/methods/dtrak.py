"""D-TRAK (Zheng et al. 2023) and a TRAK-style variant: gradient features, randomly projected, kernel-regression scores.

For each training image z, φ(z) = P · ∇θ f(z), with f averaged over a fixed grid of timesteps (noise keyed by
(seed, image, timestep), as everywhere in this package):
    output="sqnorm": f = ‖ε_θ(x_t, t, c)‖²          (D-TRAK: the model output's squared norm, no target needed)
    output="loss":   f = ‖ε_θ(x_t, t, c) − ε‖²      (TRAK-style: the denoising loss itself)
P is a sparse Johnson-Lindenstrauss projection (projector.SparseProjector: each coordinate of θ goes to one of `dim`
buckets with a random sign; dattri's "sjlt"): O(#params) per example instead of O(#params × dim), and nothing of size
#params × dim is stored.
Scores: φ(ẑ)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z), λ = damping · trace(ΦᵀΦ) / dim (relative, so it does not depend on the gradients' scale).

Φ (N, dim) lives in the work directory as a chunked array (resumable), once per settings; queries only cost φ(ẑ).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from .. import ops
from ..errors import SettingsError
from ..engine.loss_grid import NOISE_KEYS, timestep_grid
from ..engine.scoring import noise_ids
from ..workspace import Workspace, rows_of
from .base import AttributionMethod
from .projector import SparseProjector

OUTPUTS = ("sqnorm", "loss")


@dataclass
class GradientKernel(AttributionMethod):
    """output: "sqnorm" (D-TRAK) or "loss" (TRAK-style). group: the UNet parameters differentiated (a
    DiffusionModel.parameter_group name or regex). block: examples per vmap call (memory only). noise: "example"
    (keyed by each image's id; a query by its own hash) or "shared" (every image and query sees the same noise at a
    timestep, so identical images get identical features)."""

    output: str = "sqnorm"
    timesteps: int = 10
    dim: int = 4096
    group: str = "all"
    damping: float = 0.01
    seed: int = 0
    block: int = 16
    noise: str = "example"

    def __post_init__(self):
        if self.noise not in NOISE_KEYS:
            raise SettingsError(f"gradient kernel noise must be one of {NOISE_KEYS}, got {self.noise!r}")
        if self.output not in OUTPUTS:
            raise SettingsError(f"gradient kernel output must be one of {OUTPUTS}, got {self.output!r}")
        if self.timesteps < 1 or self.dim < 1 or self.block < 1 or self.damping < 0:
            raise SettingsError(f"gradient kernel needs timesteps, dim, block >= 1 and damping >= 0: {self}")

    @property
    def name(self) -> str:
        return "dtrak" if self.output == "sqnorm" else "trak"

    @property
    def title(self) -> str:
        return "D-TRAK" if self.output == "sqnorm" else "TRAK"

    @property
    def score_meaning(self) -> str:
        output = "‖ε̂‖²" if self.output == "sqnorm" else "the denoising loss"
        return f"φ(image)ᵀ (ΦᵀΦ + λI)⁻¹ φ(query), φ the projected gradient of {output}: a kernel-regression weight"

    def settings(self) -> dict:
        # noise "example" is left out, so the keys (and cached features) of runs made before the option stay valid
        return {k: v for k, v in super().settings().items()
                if k != "block" and not (k == "noise" and v == "example")}

    # ---------------------------------------------------------------------------------------------- features
    def features(self, model, x0: torch.Tensor, cond: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor:
        """φ (B, dim) float64 for rows x0 (B, C, h, w), cond (B, L, D), the noise keyed by example_ids (B,)."""
        params = model.parameter_group(self.group)
        keys = noise_ids(example_ids, self.noise).to(x0.device)
        projection = self._cached_projection(params)
        device = x0.device
        t = timestep_grid(model.num_timesteps, self.timesteps).to(device)
        steps = torch.arange(self.timesteps, device=device)

        def f(selected, x, c, e):  # one example: the mean over the grid of timesteps
            xs, cs = x.expand(len(t), *x.shape), c.expand(len(t), *c.shape)

            def denoiser(*args, **kwargs):
                return functional_call(model.unet, selected, args, kwargs)
            pred = model.predict(model.noisy(xs, e, t), t, cs, unet=denoiser).float()
            if self.output == "loss":
                pred = pred - model.target(xs, e, t).float()
            return pred.pow(2).flatten(1).sum(1).mean()

        phi = torch.zeros(len(x0), self.dim, dtype=torch.float64, device=device)
        detached = {n: p.detach() for n, p in params.items()}
        for start in range(0, len(x0), self.block):
            rows = slice(start, start + self.block)
            ids = keys[rows]
            noise = ops.gaussian_noise(self.seed, ids.repeat_interleave(len(t)), steps.repeat(len(ids)), 0,
                                       x0.shape[1:], device=device).view(len(ids), len(t), *x0.shape[1:])
            with torch.no_grad(), warnings.catch_warnings():  # torch.func.grad differentiates anyway
                # vmap runs CPU flash attention through its slow per-row fallback and warns on every call
                warnings.filterwarnings("ignore", message="There is a performance drop")
                grads = vmap(grad(f), in_dims=(None, 0, 0, 0))(detached, x0[rows], cond[rows], noise)
            for name, g in grads.items():
                projection.add_projection(phi[rows], name, g)
        return phi

    def _cached_projection(self, params) -> SparseProjector:
        key = tuple(params)
        if getattr(self, "_projection_key", None) != key:
            self._projection_cache, self._projection_key = SparseProjector(params, self.dim, self.seed), key
        return self._projection_cache

    def training_features(self, workspace: Workspace) -> np.ndarray:
        """Φ (N, dim): caption rows' features averaged per image; a chunked array in the work directory (a pass
        split over the ranks under torchrun)."""
        rows, model = workspace.caption_rows, workspace.model
        latents, conditioning = workspace.latents, workspace.conditioning

        def compute(start, stop):
            ids = torch.as_tensor(rows[start:stop])
            return self.features(model, rows_of(latents, ids.numpy()).to(model.device),
                                 rows_of(conditioning, slice(start, stop)).to(model.device),
                                 ids.to(model.device)).float()
        per_row = workspace.chunked_pass(f"methods/{self.key}/row_features", (len(rows), self.dim), compute)
        counts = np.bincount(rows, minlength=len(workspace.dataset))
        if (counts == 1).all():  # one caption per image: the rows are the images (no copy; read a chunk at a time)
            return per_row
        per_image = np.zeros((len(workspace.dataset), self.dim), dtype=np.float64)
        np.add.at(per_image, rows, np.asarray(per_row, np.float64))
        return (per_image / counts[:, None]).astype(np.float32)

    # ------------------------------------------------------------------------------------------------ scores
    def score(self, workspace: Workspace, queries) -> np.ndarray:
        model = workspace.model
        phi_train = self.training_features(workspace)
        chunks = [slice(start, start + 65536) for start in range(0, len(phi_train), 65536)]
        gram = np.zeros((self.dim, self.dim))
        for rows in chunks:
            part = np.asarray(phi_train[rows], np.float64)
            gram += part.T @ part
        damping = self.damping * np.trace(gram) / self.dim
        x0 = model.encode_images(np.stack([q.image for q in queries]))
        cond = model.encode_text([q.prompt for q in queries])
        # A query's noise is keyed by its own hash, so it never shares noise with a training image by accident.
        ids = torch.tensor([int(q.key[:8], 16) for q in queries], device=model.device)
        phi_query = self.features(model, x0, cond, ids).cpu().numpy()
        weights = np.linalg.solve(gram + damping * np.eye(self.dim), phi_query.T)  # (dim, Q)
        return np.concatenate([(np.asarray(phi_train[rows], np.float64) @ weights).T for rows in chunks], axis=1
                              ).astype(np.float32)


def DTRAK(**kwargs) -> GradientKernel:
    return GradientKernel(output="sqnorm", **kwargs)


def TRAKLoss(**kwargs) -> GradientKernel:
    return GradientKernel(output="loss", **kwargs)
