"""Projected, preconditioned loss gradients of training rows over the scoring grid (stage 1 of the two-stage AbU).

For caption row n with example id i_n, L̄_n = the mean over the work directory's scoring grid (timesteps × flips,
noise keyed by (seed, i_n, t, flip) exactly as engine/scoring.py draws it) of its denoising loss. Its feature is

    ψ_n = P · (s ⊙ ∇θ L̄_n),   s = F^(-1/2) (or 1 without preconditioning)

(or, with per_flip, one ψ per row and flip, L̄ over the timesteps only, as the exact score takes the larger flip)
for θ the Linear weights and biases of a group (hooks: capture_linear_io, as the Fisher). One forward + backward of
the batch's (row × grid) UNet rows gives every g; the weight part of each Linear goes through
ops.projected_linear_gradient with the grid's rows stacked along the token axis (∇ of a sum is the sum over T), so no
per-example gradient is ever held. The noise is the scoring pass's, so ψ_q·ψ_n is the first-order expansion of the
loss change the exact rescoring measures (METHOD.md §6).
"""
from __future__ import annotations

import torch

from .. import ops
from ..errors import SettingsError
from ..ops.noisy_input_reference import mirrored
from .scoring import noise_ids
from .fisher_hooks import capture_linear_io, linear_rows, only_these_require_grad, split_linear


def check_linear(unet, params: dict) -> None:
    """Stage 1 hooks Linear layers only (SettingsError naming the first other parameter)."""
    _, other = split_linear(unet, params)
    if other:
        raise SettingsError(f"the two-stage front projects Linear-layer gradients only; the group has "
                            f"{len(other)} other parameters (e.g. {next(iter(other))}): use a group of Linear "
                            "weights such as kv")


def projected_gradients(model, params: dict, projector, scale: dict | None, x0: torch.Tensor, cond: torch.Tensor,
                        example_ids: torch.Tensor, grid, *, per_flip: bool = False, backend: str = "auto"
                        ) -> torch.Tensor:
    """ψ (B, dim) float64 for caption rows x0 (B, C, h, w), cond (B, ...), keyed by example_ids (B,) under the LossGrid
    `grid`; with per_flip (B, F, dim), F = 2 with the grid's flips, else 1. scale: {name: F^(-1/2)} or None.
    projector: a SparseProjector over `params`."""
    unet = model.unet
    steps = grid.timestep_values(model.num_timesteps).to(x0.device)
    views = 2 if grid.flips else 1
    per_row = len(steps) * views
    ids = noise_ids(example_ids, grid.noise)
    n = len(x0)
    # UNet row r = (example, timestep, flip) in C order, as the scoring pass orders them
    example = torch.arange(n, device=x0.device).repeat_interleave(per_row)
    t = steps.repeat_interleave(views).repeat(n)
    flip = torch.arange(views, device=x0.device).repeat(n * len(steps))
    noise = ops.gaussian_noise(grid.seed, ids[example], t, flip, x0.shape[1:], device=x0.device)
    x = mirrored(x0[example], flip)
    paths = sorted({name.rpartition(".")[0] for name in params})
    with capture_linear_io(unet, paths, len(example)) as captured, only_these_require_grad(unet, params), \
            torch.enable_grad():
        # Σ_n L̄_n (mean over timesteps and flips), or Σ_(n,f) L̄_nf (over timesteps only)
        loss = model.loss(x, cond[example], t, noise).sum() / (len(steps) if per_flip else per_row)
    grads = torch.autograd.grad(loss, [output for _, output in captured.values()])
    groups = n * views if per_flip else n  # one ψ per group of UNet rows
    out = torch.zeros(groups, projector.dim, dtype=torch.float64, device=x0.device)
    for path, xs, gs in linear_rows(captured, grads, len(example), len(example)):
        # each group's UNet rows side by side on the token axis: (groups, rows per group · tokens, d)
        xs, gs = _grouped(xs, n, len(steps), views, per_flip), _grouped(gs, n, len(steps), views, per_flip)
        name = f"{path}.weight"
        bucket, sign = projector.buckets[name]
        out += ops.projected_linear_gradient(xs, gs, bucket, sign, projector.dim,
                                             None if scale is None else scale[name], backend=backend)
        if f"{path}.bias" in params:
            bias = gs.float().sum(1)
            if scale is not None:
                bias = bias * scale[f"{path}.bias"].float()
            projector.add_projection(out, f"{path}.bias", bias)
    return out.reshape(n, views, -1) if per_flip else out


def _grouped(values: torch.Tensor, n: int, steps: int, views: int, per_flip: bool) -> torch.Tensor:
    """(n·steps·views, tokens, d) UNet rows in (example, timestep, flip) order → (groups, rows · tokens, d)."""
    if not per_flip:
        return values.reshape(n, -1, values.shape[-1])
    tokens, d = values.shape[1], values.shape[2]
    by_flip = values.reshape(n, steps, views, tokens, d).transpose(1, 2)  # (n, views, steps, tokens, d)
    return by_flip.reshape(n * views, steps * tokens, d)
