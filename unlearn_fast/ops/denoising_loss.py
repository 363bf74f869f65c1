"""denoising_loss: per-row mean((pred - target)^2) with the noise regenerated in-kernel, never stored.

The noise and the mirrored x0' are exactly those of noisy_input with the same arguments, so the pair
x_t = noisy_input(...); pred = model(x_t, t, c); denoising_loss(pred, ...) never writes the noise to memory.
Spec in denoising_loss_reference.py (the oracle); fast paths in csrc/ (C++/OpenMP, CUDA) and triton_kernels/.
"""
from __future__ import annotations

import math

import torch

from . import _backend
from .denoising_loss_reference import denoising_loss_reference
from .noisy_input import check_float_tensor, fused_inputs

PREDICTION_TYPES = ("epsilon", "v_prediction")


def _native(pred, x0, a_t, s_t, seed, ids, timestep_idx, flips, prediction_type):
    return _backend.native().denoising_loss(pred, x0, a_t, s_t, seed, ids, timestep_idx, flips,
                                            prediction_type == "v_prediction")


def _triton(*args):
    from triton_kernels.denoising_loss import denoising_loss_triton  # imported on first use: triton is optional

    return denoising_loss_triton(*args)


_IMPLEMENTATIONS = {"reference": denoising_loss_reference, "cpp": _native, "cuda": _native, "triton": _triton}


def denoising_loss(
    pred: torch.Tensor,
    x0: torch.Tensor,
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    seed: int,
    example_ids,
    timestep_indices,
    flips,
    *,
    prediction_type: str = "epsilon",
    backend: str = "auto",
) -> torch.Tensor:
    """Per-row denoising loss mean((pred − target)²) over (C, H, W), in float32.

    Args:
        pred: the model's output for x_t = noisy_input(x0, a_t, s_t, seed, ...), x0's shape; float32, bfloat16 or
            float16, any strides.
        x0, a_t, s_t, seed, example_ids, timestep_indices, flips: as for noisy_input (x0 is read only for
            v_prediction); samples must not be empty.
        prediction_type: "epsilon" (target ε) or "v_prediction" (target a_t·ε − s_t·x0', diffusers' get_velocity).
        backend: "auto", "cpp", "cuda", "triton" or "reference" (see unlearn_fast.ops.available_backends()).

    Returns:
        float32 (B,), row b independent of the other rows (same bits for any batch size or order on one backend).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    inputs = fused_inputs(x0, a_t, s_t, seed, example_ids, timestep_indices, flips)
    pred = check_float_tensor("pred", pred, x0.shape)
    if pred.device != x0.device:
        raise ValueError(f"pred is on {pred.device} but x0 is on {x0.device}")
    if math.prod(x0.shape[1:]) == 0:
        raise ValueError(f"x0 and pred samples must not be empty (the mean is undefined), got shape {tuple(x0.shape)}")
    chosen = _backend.resolve("denoising_loss", backend, x0.device)
    return _IMPLEMENTATIONS[chosen](pred, *inputs, prediction_type)
