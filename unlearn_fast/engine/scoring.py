"""Per-example denoising losses over a fixed timestep grid: the quantity AbU scores with (METHOD.md §5).

    τ(z) = L(z, θ_unlearned) − L(z, θ0)     (score_rules.py: this and the other score rules)

is only meaningful if both losses see EXACTLY the same noise. Here the noise of a row is a pure function of
(seed, example id, timestep, flip) (ops.gaussian_noise; with LossGrid.noise = "shared", of (seed, timestep, flip)
alone), so an example's loss never depends on the batch size, its batch position or the other examples in the call: L(·, θ0) is computed once and reused for every query, and any shard of the
training set can be scored on its own.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import ops
from .batching import pad_rows
from .device import module_device, to_device
from ..models.adapter import DiffusionModel
from ..ops.noisy_input_reference import mirrored
from .loss_grid import LossGrid
from .unet_forward import precision, unet_forward
from .weight_swap import swapped_weights

def _stored_noise_losses(model, unet, x0, cond, ids, t, flips, settings):
    # The same noise bits on every ops backend, so the fastest one is used: this path differs only in storing it.
    # The oracle calls the UNet as it is (eager, its own memory format): the plan's speed-ups are not applied.
    noise = ops.gaussian_noise(settings.seed, ids, t, flips, x0.shape[1:], device=x0.device)
    x0 = mirrored(x0, flips)
    with precision(settings.dtype, x0.device):
        return model.loss(x0, cond, t, noise, unet=unet)


@torch.no_grad()
def per_example_losses(model: DiffusionModel, x0: torch.Tensor, cond: torch.Tensor, example_ids,
                       settings: LossGrid = LossGrid(), *, unet: torch.nn.Module | None = None,
                       progress: bool = False) -> torch.Tensor:
    """Denoising loss of every (example, timestep, flip): float32 (N, T, F), F = 2 with settings.flips else 1.

    Args:
        model: gives the scheduler, the prediction type and (unless `unet` is given) the UNet; put it in eval mode.
        x0: (N, C, h, w) model inputs (model.encode_images).
        cond: (N, L, D) text conditioning, one per row of x0 (model.encode_text). An example with several captions
            is scored by passing one row per (example, caption) pair, all with the example's id (so every caption
            sees the example's noise), and averaging the rows of each example afterwards.
        example_ids: N dataset indices: the noise key, so they must be the same whenever an example is scored.
        unet: score with this UNet instead of model.unet (e.g. an unlearned copy).
        progress: show a progress bar over batches.

    Column f = 1 scores x0 mirrored along its width. Losses are averaged over (C, h, w) only: the caller averages over
    timesteps, flips or captions as the method asks.
    """
    return losses_under_weights(model, x0, cond, example_ids, settings, [{}], unet=unet, progress=progress)[0]


def noise_ids(example_ids, noise: str) -> torch.Tensor:
    """The ids the noise is keyed by (ops.gaussian_noise): each row's example id, or 0 for every row when the noise is
    "shared" (every image sees the same noise at a timestep and flip: NOISE_KEYS)."""
    ids = torch.as_tensor(example_ids, dtype=torch.int64)
    return torch.zeros_like(ids) if noise == "shared" else ids


@torch.no_grad()
def losses_under_weights(model: DiffusionModel, x0: torch.Tensor, cond: torch.Tensor, example_ids,
                         settings: LossGrid, weight_sets: list[dict[str, torch.Tensor]], *,
                         unet: torch.nn.Module | None = None, progress: bool = False) -> torch.Tensor:
    """per_example_losses under each of Q sets of weights (each swapped into the UNet in turn: weight_swap), in one
    sweep: every batch of rows is moved and noised once, then run through each set. float32 (Q, N, T, F), each
    [q] with the same bits as per_example_losses under weight_sets[q] ({} = the UNet's own weights)."""
    unet = unet if unet is not None else model.unet
    device = module_device(unet)  # x0 and cond may stay on the CPU: one batch at a time goes to the UNet's device
    ids = noise_ids(example_ids, settings.noise)
    if x0.ndim != 4 or len(cond) != len(x0) or ids.shape != (len(x0),):
        raise ValueError(f"per_example_losses needs x0 (N, C, h, w) with one cond and one example id per row, got x0 "
                         f"{tuple(x0.shape)}, cond {tuple(cond.shape)}, example_ids {tuple(ids.shape)}")
    timesteps = settings.timestep_values(model.num_timesteps)
    n, steps, views = len(x0), len(timesteps), 2 if settings.flips else 1

    # Row r is (example, timestep, flip) in C order, so losses.view(n, steps, views) needs no reshuffle.
    example = torch.arange(n).repeat_interleave(steps * views)
    step = torch.arange(steps).repeat_interleave(views).repeat(n)
    flip = torch.arange(views).repeat(n * steps)
    fused = settings.path == "fused"
    forward = unet_forward(model, unet, settings.forward_plan, device) if fused else None
    minimum = settings.batch_size if fused and settings.compile != "none" else 0  # a compiled UNet sees one shape
    losses = torch.empty(len(weight_sets), len(example), dtype=torch.float32, device=device)
    # One set is swapped in once for the whole pass; several are swapped in turn for every batch.
    whole_pass, per_batch = (weight_sets[0], [{}]) if len(weight_sets) == 1 else ({}, weight_sets)
    with swapped_weights(unet, whole_pass):
        for start, count, batch in _batches(x0, cond, ids, timesteps, example, step, flip, settings.batch_size,
                                            minimum, device, progress):
            x, c, i, t, f = batch
            # The noise key's timestep word is the timestep itself, so a timestep keeps its noise in any grid.
            if fused:
                k, row_weight = model.coefficients(t), model.objective.weight(t)  # SD3: σ²
                x_t = ops.noisy_input(x, k.a, k.s, settings.seed, i, t, f)  # once for every set of weights
            for q, weights in enumerate(per_batch):
                with swapped_weights(unet, weights):
                    if fused:
                        with precision(settings.dtype, device):
                            pred = forward(x_t, t, c)
                        batch_losses = ops.denoising_loss(pred, x, k.c_eps, k.c_x, settings.seed, i, t, f)
                        if row_weight is not None:
                            batch_losses = batch_losses * row_weight
                    else:
                        batch_losses = _stored_noise_losses(model, unet, x, c, i, t, f, settings)
                losses[q, start:start + count] = batch_losses[:count]
    return losses.view(len(weight_sets), n, steps, views).to(x0.device)


def _batches(x0, cond, ids, timesteps, example, step, flip, batch_size, minimum, device, progress):
    """(start, count, (x0, cond, ids, t, flip) on `device`) per batch of UNet rows; padded to `minimum` rows."""
    for start in tqdm(range(0, len(example), batch_size), desc="losses", unit="batch", disable=not progress):
        rows = torch.arange(start, min(start + batch_size, len(example)))
        count, rows = len(rows), pad_rows(rows, minimum)  # padding's losses are dropped
        e = example[rows]
        yield start, count, [to_device(v, device) for v in (x0[e.to(x0.device)], cond[e.to(cond.device)], ids[e],
                                                           timesteps[step[rows]], flip[rows])]
