"""Unlearning a query (METHOD.md §4): Fisher-preconditioned gradient ASCENT on its loss, on a copy of the UNet.

    repeat `steps` times:  θ ← θ + (α / N) · ĝ / F,   ĝ = mean over `draws` (t, ε) of ∇θ L(ẑ, θ)

F is estimate_fisher's output, which already includes the damping λ. Draw d of step k is keyed by (seed, k, d):
timestep keyed_timesteps(seed, k, d), noise ops.gaussian_noise(seed, k, d, flip 0), so ĝ does not depend on
batch_size and a run is repeatable.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from . import ops
from .batching import pad_rows
from .errors import SettingsError
from .fisher import keyed_timesteps
from .fisher_hooks import summed_gradient


@dataclass
class UnlearnSettings:
    """group: the weights changed (a DiffusionModel.parameter_group name or regex). precondition=False: plain SGD
    ascent (θ += α/N · ĝ), the baseline METHOD.md says falls to chance. num_train: N in α/N, overriding the caller's
    training-set size."""

    steps: int = 1
    alpha: float = 0.1  # chosen on validation prompts (benchmarks/results/tuning.md); the paper's MSCOCO value is 0.01
    draws: int = 500
    batch_size: int = 64
    seed: int = 0
    group: str = "kv"
    precondition: bool = True
    num_train: int | None = None

    def __post_init__(self):
        for name in ("steps", "draws", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SettingsError(f"unlearning {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise SettingsError(f"alpha must be a finite step size > 0, got {self.alpha!r} (0 changes no weight and "
                                "scores every image 0; a negative step would make the query more likely, not less)")
        if self.num_train is not None and (not isinstance(self.num_train, int) or self.num_train < 1):
            raise SettingsError(f"num_train must be >= 1 or None, got {self.num_train!r}")


def query_gradient(model, unet, params: dict, x0_query, cond_query, settings: UnlearnSettings, step: int):
    """ĝ in float64: the mean over the step's draws of ∇ L(ẑ), whatever the batch size (fisher_hooks.summed_gradient)."""
    T = model.scheduler.config.num_train_timesteps
    total = {name: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for name, p in params.items()}
    for start in range(0, settings.draws, settings.batch_size):
        d = torch.arange(start, min(start + settings.batch_size, settings.draws), device=x0_query.device)
        count, d = len(d), pad_rows(d)  # padding draws are dropped from the loss, so they add no gradient
        t = keyed_timesteps(settings.seed, step, d, T).to(x0_query.device)
        noise = ops.gaussian_noise(settings.seed, step, d, 0, x0_query.shape[1:], device=x0_query.device)
        grads = summed_gradient(model, unet, params, x0_query.expand(len(d), -1, -1, -1),
                                cond_query.expand(len(d), -1, -1), t, noise, rows=count, scale=1.0 / settings.draws)
        for name, g in grads.items():
            total[name] += g
    return total


def unlearn(model, fisher: dict[str, torch.Tensor], x0_query: torch.Tensor, cond_query: torch.Tensor,
            settings: UnlearnSettings = UnlearnSettings(), num_train: int | None = None) -> torch.nn.Module:
    """An unlearned deep copy of model.unet (model itself is untouched); x0_query (1, C, h, w), cond_query (1, L, D)."""
    N = settings.num_train or num_train
    if not N:
        raise ValueError("unlearn needs the training-set size N (num_train argument or settings.num_train)")
    if x0_query.ndim != 4 or len(x0_query) != 1 or cond_query.ndim != 3 or len(cond_query) != 1:
        raise ValueError(f"unlearn takes one query: x0 (1, C, h, w) and cond (1, L, D), got {tuple(x0_query.shape)} "
                         f"and {tuple(cond_query.shape)}")
    unet = copy.deepcopy(model.unet)
    copies = dict(unet.named_parameters())
    params = {name: copies[name] for name in model.parameter_group(settings.group)}
    if settings.precondition:
        missing = [n for n, p in params.items() if n not in fisher or fisher[n].shape != p.shape]
        if missing:
            raise SettingsError(f"the Fisher lacks (or has another shape for) {len(missing)} parameters of group "
                             f"{settings.group!r}, e.g. {missing[0]}: estimate it over the same group")
    scale = settings.alpha / N
    for step in range(settings.steps):
        g = query_gradient(model, unet, params, x0_query, cond_query, settings, step)
        with torch.no_grad():
            for name, p in params.items():
                update = g[name] / fisher[name].to(p.device, torch.float64) if settings.precondition else g[name]
                new = (p.double() + scale * update).to(p.dtype)
                if not torch.isfinite(new).all():
                    raise FloatingPointError(f"unlearning produced NaN/inf in {name} at step {step}: try a smaller "
                                             f"alpha (now {settings.alpha})")
                p.copy_(new)
    return unet
