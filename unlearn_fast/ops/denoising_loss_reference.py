"""Pure-PyTorch fused denoising loss: the oracle of ops.denoising_loss.

    loss[b] = mean over (C, H, W) of (pred[b] - target[b])^2        float32
    target  = eps                                  prediction_type "epsilon"
    target  = a_t[b] * eps - s_t[b] * x0'          prediction_type "v_prediction" (diffusers' get_velocity)

with eps and the mirrored x0' exactly as in noisy_input_reference.py, so pred = model(noisy_input(...)) is scored
against the very noise it was given.
"""
from __future__ import annotations

import torch

from .noisy_input_reference import noise_and_mirrored_x0


def denoising_loss_reference(
    pred: torch.Tensor,
    x0: torch.Tensor,
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    seed: int,
    ids: torch.Tensor,
    timestep_idx: torch.Tensor,
    flips: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """Per-row loss of shape (B,), float32; inputs are validated by ops.denoising_loss."""
    eps, x = noise_and_mirrored_x0(x0, seed, ids, timestep_idx, flips)
    target = eps if prediction_type == "epsilon" else a_t.view(-1, 1, 1, 1) * eps - s_t.view(-1, 1, 1, 1) * x
    return (pred.float() - target).pow(2).flatten(1).mean(1)
