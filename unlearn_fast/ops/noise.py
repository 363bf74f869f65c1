"""gaussian_noise: N(0, 1) noise that is a pure function of (seed, example id, timestep index, flip, element index).

Noise is never stored and never depends on batch size, batch position, device, backend or shard: any worker
regenerates it. Spec in noise_reference.py (the oracle); fast paths in csrc/ (C++/OpenMP, CUDA) and triton_kernels/,
registered in registry.py; the op is the torch.library custom op unlearn_fast::gaussian_noise (library.py).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from . import registry
from .library import NAMESPACE, seed_from_int64, seed_to_int64

_MAX_NUMEL = 1 << 34  # the element counter word holds element // 4 < 2**32
_DTYPES = (torch.float32, torch.float64)
KEY_UPPER_BOUNDS = {"example_ids": 2**32, "timestep_indices": 2**32, "flips": 2}


def _per_sample(name: str, value, device: torch.device, upper: int) -> torch.Tensor | int:
    """An int in [0, upper) (broadcast later) or a 1-D int64 tensor on `device`, its values checked by check_keys.

    Tensor values are checked inside the custom op, where they are real: reading them here would break a
    torch.compile graph.
    """
    if isinstance(value, numbers.Integral):
        if not 0 <= value < upper:
            raise ValueError(f"{name} must be in [0, {upper}), got {value}")
        return int(value)
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value) if len(value) else torch.zeros(0, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name} must be an int, a sequence of ints or a 1-D integer tensor, got {value!r}") from exc
    if value.dim() != 1:
        raise ValueError(f"{name} must be an int or 1-D, got shape {tuple(value.shape)}")
    if value.is_floating_point() or value.is_complex():
        raise ValueError(f"{name} must have an integer or bool dtype, got {value.dtype}")
    return value.to(device=device, dtype=torch.int64)


def check_keys(ids: torch.Tensor, timestep_idx: torch.Tensor, flips: torch.Tensor) -> None:
    """ValueError naming the first key out of its range (KEY_UPPER_BOUNDS), and where."""
    for (name, upper), value in zip(KEY_UPPER_BOUNDS.items(), (ids, timestep_idx, flips)):
        bad = (value < 0) | (value >= upper)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} must be in [0, {upper}), got {int(value[i])} at position {i}")


@torch.library.custom_op(f"{NAMESPACE}::gaussian_noise", mutates_args=())
def _gaussian_noise_op(seed: int, ids: torch.Tensor, timestep_idx: torch.Tensor, flips: torch.Tensor, numel: int,
                       dtype: torch.dtype, backend: str) -> torch.Tensor:
    check_keys(ids, timestep_idx, flips)
    return registry.run("gaussian_noise", backend, ids.device, seed_from_int64(seed), ids, timestep_idx, flips, numel,
                        dtype)


@_gaussian_noise_op.register_fake
def _(seed, ids, timestep_idx, flips, numel, dtype, backend):
    return ids.new_empty((ids.shape[0], numel), dtype=dtype)


def gaussian_noise(
    seed: int,
    example_ids,
    timestep_indices,
    flips,
    shape: int | Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Standard normal noise of shape (B, *shape), row b keyed by (seed, example_ids[b], timestep_indices[b], flips[b]).

    Args:
        seed: int in [0, 2**64).
        example_ids, timestep_indices: ints in [0, 2**32), each an int (shared by all rows), a sequence or a 1-D
            tensor; the non-scalar ones must all have length B (B = 1 when all three are ints).
        flips: 0/1 (or bools), likewise: the horizontally flipped view of an example gets its own noise.
        shape: the per-sample shape, e.g. (4, 64, 64) for SD latents; at most 2**34 elements.
        dtype: torch.float32 or torch.float64 (values are computed in float64 and rounded once).
        device: output device; default the device of the first tensor among the per-sample inputs, else CPU.
        backend: "auto", "cpp", "cuda", "triton" or "reference" (see unlearn_fast.ops.available_backends()).
    """
    if not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    seed = int(seed)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(s, numbers.Integral) and s >= 0 for s in shape):
        raise ValueError(f"shape must be non-negative ints, got {shape}")
    numel = math.prod(shape)  # ints, so no overflow
    if numel > _MAX_NUMEL:
        raise ValueError(f"shape must have at most 2**34 elements, got {shape} ({numel})")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    inputs = {"example_ids": example_ids, "timestep_indices": timestep_indices, "flips": flips}
    if device is None:
        device = next((v.device for v in inputs.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)

    rows = {name: _per_sample(name, value, device, KEY_UPPER_BOUNDS[name]) for name, value in inputs.items()}
    lengths = {name: len(v) for name, v in rows.items() if isinstance(v, torch.Tensor)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"example_ids, timestep_indices and flips must have the same length, got {lengths}")
    batch = next(iter(lengths.values()), 1)
    ids, steps, flip = (
        v if isinstance(v, torch.Tensor) else torch.full((batch,), v, dtype=torch.int64, device=device)
        for v in rows.values()
    )

    out = _gaussian_noise_op(seed_to_int64(seed), ids.contiguous(), steps.contiguous(), flip.contiguous(), numel, dtype,
                             backend)
    return out.view(batch, *shape)
