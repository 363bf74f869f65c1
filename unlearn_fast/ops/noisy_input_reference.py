"""Pure-PyTorch fused noisy input: the oracle of ops.noisy_input, and the pieces the denoising_loss oracle shares.

    x_t[b] = a_t[b] * x0'[b] + s_t[b] * eps[b]      in float32, rounded once to the output dtype

where eps[b] is exactly the float32 output of gaussian_noise(seed, ids[b], timestep_idx[b], flips[b], (C, H, W))
(spec in noise_reference.py) and x0'[b] is x0[b] mirrored along W (the last axis) when flips[b] = 1. The fast backends
regenerate eps in-kernel and read x0' mirrored in place; this oracle materialises both.
"""
from __future__ import annotations

import math

import torch

from .noise_reference import gaussian_noise_reference


def mirrored(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) with rows b where flips[b] = 1 reversed along W."""
    return torch.where(flips.bool().view(-1, 1, 1, 1), x.flip(-1), x)


def noise_and_mirrored_x0(x0, seed, ids, timestep_idx, flips) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0'), both float32 of x0's shape."""
    eps = gaussian_noise_reference(seed, ids, timestep_idx, flips, math.prod(x0.shape[1:]), torch.float32)
    return eps.view(x0.shape), mirrored(x0.float(), flips)


def noisy_input_reference(
    x0: torch.Tensor,
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    seed: int,
    ids: torch.Tensor,
    timestep_idx: torch.Tensor,
    flips: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """x_t of shape (B, C, H, W), contiguous; inputs are validated by ops.noisy_input."""
    eps, x = noise_and_mirrored_x0(x0, seed, ids, timestep_idx, flips)
    return (a_t.view(-1, 1, 1, 1) * x + s_t.view(-1, 1, 1, 1) * eps).to(out_dtype).contiguous()
