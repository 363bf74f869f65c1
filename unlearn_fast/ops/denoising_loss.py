"""denoising_loss: per-row mean((pred - target)^2) with the noise regenerated in-kernel, never stored.

target = c_eps·ε + c_x·x0', with ε and the mirrored x0' exactly those of noisy_input with the same keys, so the pair
x_t = noisy_input(...); pred = model(x_t, t, c); denoising_loss(pred, ...) never writes the noise to memory. The
coefficients say what the model predicts (the model layer computes them): epsilon (1, 0), v-prediction (a_t, −s_t),
flow matching (1, −1). Spec in denoising_loss_reference.py (the oracle); fast paths in csrc/ (C++/OpenMP, CUDA) and
triton_kernels/, registered in registry.py; the op is the torch.library custom op unlearn_fast::denoising_loss.
"""
from __future__ import annotations

import math

import torch

from . import registry
from .library import NAMESPACE, seed_from_int64
from .noise import check_keys
from .noisy_input import check_float_tensor, fused_inputs


@torch.library.custom_op(f"{NAMESPACE}::denoising_loss", mutates_args=())
def _denoising_loss_op(pred: torch.Tensor, x0: torch.Tensor, c_eps: torch.Tensor, c_x: torch.Tensor, seed: int,
                       ids: torch.Tensor, timestep_idx: torch.Tensor, flips: torch.Tensor,
                       backend: str) -> torch.Tensor:
    check_keys(ids, timestep_idx, flips)
    return registry.run("denoising_loss", backend, x0.device, pred, x0, c_eps, c_x, seed_from_int64(seed), ids,
                        timestep_idx, flips)


@_denoising_loss_op.register_fake
def _(pred, x0, c_eps, c_x, seed, ids, timestep_idx, flips, backend):
    return x0.new_empty((x0.shape[0],), dtype=torch.float32)


def _check_coefficient(name: str, value, x0: torch.Tensor) -> None:
    """ValueError naming `name` unless value is a float32 (B,) tensor on x0's device."""
    batch = x0.shape[0]
    if not (isinstance(value, torch.Tensor) and value.shape == (batch,) and value.dtype == torch.float32):
        got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else repr(value)
        raise ValueError(f"{name} must be a float32 tensor of shape ({batch},) (one per row of x0), got {got}")
    if value.device != x0.device:
        raise ValueError(f"{name} is on {value.device} but x0 is on {x0.device}")


def denoising_loss(
    pred: torch.Tensor,
    x0: torch.Tensor,
    c_eps: torch.Tensor,
    c_x: torch.Tensor,
    seed: int,
    example_ids,
    timestep_indices,
    flips,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-row denoising loss mean((pred − target)²) over (C, H, W), target = c_eps·ε + c_x·x0', in float32.

    Args:
        pred: the model's output for x_t = noisy_input(x0, a_t, s_t, seed, ...), x0's shape; float32, bfloat16 or
            float16, any strides.
        x0, seed, example_ids, timestep_indices, flips: as for noisy_input (x0 is always read); samples must not be
            empty.
        c_eps, c_x: float32 (B,) on x0's device, the target's coefficients of ε and x0' (epsilon: 1 and 0, for which
            the target is exactly ε; v-prediction: a_t and −s_t; flow matching: 1 and −1).
        backend: "auto", "cpp", "cuda", "triton" or "reference" (see unlearn_fast.ops.available_backends()).

    Returns:
        float32 (B,), row b independent of the other rows (same bits for any batch size or order on one backend).
    """
    x0 = check_float_tensor("x0", x0)
    _check_coefficient("c_eps", c_eps, x0)
    _check_coefficient("c_x", c_x, x0)
    inputs = fused_inputs(x0, c_eps, c_x, seed, example_ids, timestep_indices, flips)  # c_eps, c_x in a_t, s_t's place
    pred = check_float_tensor("pred", pred, x0.shape)
    if pred.device != x0.device:
        raise ValueError(f"pred is on {pred.device} but x0 is on {x0.device}")
    if math.prod(x0.shape[1:]) == 0:
        raise ValueError(f"x0 and pred samples must not be empty (the mean is undefined), got shape {tuple(x0.shape)}")
    return _denoising_loss_op(pred, *inputs, backend)
