"""noisy_input: x_t = a_t * x0' + s_t * eps with eps regenerated in-kernel, never stored.

eps is exactly gaussian_noise(seed, example_ids, timestep_indices, flips, (C, H, W)) and x0' is x0 mirrored along W on
flipped rows, read mirrored in place. Spec in noisy_input_reference.py (the oracle); fast paths in csrc/ (C++/OpenMP,
CUDA) and triton_kernels/, registered in registry.py; the op is the torch.library custom op unlearn_fast::noisy_input.
denoising_loss scores a prediction against the same eps with the same inputs.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import registry
from .library import NAMESPACE, seed_from_int64, seed_to_int64
from .noise import _per_sample, check_keys

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_NUMEL = 1 << 34  # the element counter word of the noise holds element // 4 < 2**32


def check_float_tensor(name: str, value, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """value, if it is a float32/bfloat16/float16 tensor, 4-D or of `shape` when given; else ValueError naming it."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    expected = "(B, C, H, W)" if shape is None else str(tuple(shape))
    if (value.dim() != 4) if shape is None else (tuple(value.shape) != tuple(shape)):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)} {value.dtype}")
    if value.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {value.dtype} of shape {tuple(value.shape)}")
    return value


def fused_inputs(x0, a_t, s_t, seed, example_ids, timestep_indices, flips):
    """Inputs of the fused noise ops: x0 as given, a_t and s_t float32 (B,), the seed as an int64 (library.py),
    ids/steps/flips int64 (B,) (their values checked inside the op by check_keys)."""
    x0 = check_float_tensor("x0", x0)
    batch, device = x0.shape[0], x0.device
    if math.prod(x0.shape[1:]) > _MAX_NUMEL:
        raise ValueError(f"x0 samples must have at most 2**34 elements, got shape {tuple(x0.shape)}")
    for name, coefficient in (("a_t", a_t), ("s_t", s_t)):
        if not (isinstance(coefficient, torch.Tensor) and coefficient.shape == (batch,)
                and coefficient.dtype == torch.float32):
            got = f"{tuple(coefficient.shape)} {coefficient.dtype}" if isinstance(coefficient, torch.Tensor) else repr(coefficient)
            raise ValueError(f"{name} must be a float32 tensor of shape ({batch},) (one per row of x0), got {got}")
        if coefficient.device != device:
            raise ValueError(f"{name} is on {coefficient.device} but x0 is on {device}")
    if not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    keys = []
    for name, value, upper in (("example_ids", example_ids, 2**32), ("timestep_indices", timestep_indices, 2**32),
                               ("flips", flips, 2)):
        value = _per_sample(name, value, device, upper)
        if isinstance(value, int):
            value = torch.full((batch,), value, dtype=torch.int64, device=device)
        elif len(value) != batch:
            raise ValueError(f"{name} must have length {batch} (one per row of x0), got shape {tuple(value.shape)}")
        keys.append(value.contiguous())
    return x0, a_t.contiguous(), s_t.contiguous(), seed_to_int64(int(seed)), *keys


@torch.library.custom_op(f"{NAMESPACE}::noisy_input", mutates_args=())
def _noisy_input_op(x0: torch.Tensor, a_t: torch.Tensor, s_t: torch.Tensor, seed: int, ids: torch.Tensor,
                    timestep_idx: torch.Tensor, flips: torch.Tensor, out_dtype: torch.dtype,
                    backend: str) -> torch.Tensor:
    check_keys(ids, timestep_idx, flips)
    return registry.run("noisy_input", backend, x0.device, x0, a_t, s_t, seed_from_int64(seed), ids, timestep_idx,
                        flips, out_dtype)


@_noisy_input_op.register_fake
def _(x0, a_t, s_t, seed, ids, timestep_idx, flips, out_dtype, backend):
    return x0.new_empty(x0.shape, dtype=out_dtype)  # contiguous, as every backend returns it


def noisy_input(
    x0: torch.Tensor,
    a_t: torch.Tensor,
    s_t: torch.Tensor,
    seed: int,
    example_ids,
    timestep_indices,
    flips,
    *,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """x_t = a_t·x0' + s_t·ε for a batch of B samples, ε regenerated from the gaussian_noise generator.

    Args:
        x0: (B, C, H, W) float32, bfloat16 or float16, any strides (read in place, never copied).
        a_t, s_t: float32 (B,) on x0's device, e.g. DiffusionModel.noise_coefficients(timesteps).
        seed: int in [0, 2**64).
        example_ids, timestep_indices: ints in [0, 2**32); each an int (shared by all rows), a sequence or a 1-D tensor
            of length B.
        flips: 0/1 (or bools), likewise: rows with flips[b] = 1 use x0[b] mirrored along W, and their own noise.
        out_dtype: float32, bfloat16 or float16; default x0's dtype. Arithmetic is float32, rounded once.
        backend: "auto", "cpp", "cuda", "triton" or "reference" (see unlearn_fast.ops.available_backends()).

    Returns:
        x_t, contiguous (B, C, H, W) of out_dtype; ε is exactly
        gaussian_noise(seed, example_ids, timestep_indices, flips, (C, H, W)).
    """
    inputs = fused_inputs(x0, a_t, s_t, seed, example_ids, timestep_indices, flips)
    out_dtype = x0.dtype if out_dtype is None else out_dtype
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {out_dtype}")
    return _noisy_input_op(*inputs, out_dtype, backend)
