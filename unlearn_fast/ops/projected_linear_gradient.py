"""projected_linear_gradient: P · vec(s ⊙ g_nᵀx_n) per example for a Linear layer, without ever holding the
(N, d_out, d_in) per-example gradients or a dense projection.

Spec in projected_linear_gradient_reference.py (the oracle); the fast path is projected_linear_gradient_blocked.py:
the input features in blocks, one (N, d_out, block) slab at a time. It is plain PyTorch (batched matmul + index_add),
so it runs on every device; there is no native kernel yet, so the op has two backends, "blocked" and "reference"
(registry.py). The op is the torch.library custom op unlearn_fast::projected_linear_gradient.
engine/projected_gradients.py feeds it from hooks on a model's Linear layers (stage 1 of the two-stage AbU).
"""
from __future__ import annotations

import torch

from . import registry
from .library import NAMESPACE
from .noisy_input import FLOAT_DTYPES

BACKENDS = registry.backends("projected_linear_gradient")


@torch.library.custom_op(f"{NAMESPACE}::projected_linear_gradient", mutates_args=())
def _projected_linear_gradient_op(x: torch.Tensor, g: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, dim: int,
                                  scale: torch.Tensor | None, backend: str) -> torch.Tensor:
    return registry.run("projected_linear_gradient", backend, x.device, x, g, bucket, sign, dim, scale)


@_projected_linear_gradient_op.register_fake
def _(x, g, bucket, sign, dim, scale, backend):
    return x.new_empty((x.shape[0], dim), dtype=torch.float64)


def projected_linear_gradient(x: torch.Tensor, g: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, dim: int,
                              scale: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Projected, scaled per-example weight gradients of a Linear layer y = x Wᵀ (+ b).

    Args:
        x: the layer's inputs, (N, T, d_in): N examples of T tokens each (all the rows of one example's loss, e.g.
            several timesteps, may be stacked along T: the gradient of their sum is the sum over T).
        g: dL_n/dy (N, T, d_out), the gradient of each example's OWN loss w.r.t. its outputs. float32, bfloat16 or
            float16, any strides, same device as x.
        bucket: (d_out, d_in) or (d_out·d_in,) int64 buckets in [0, dim); sign: the same shape, ±1.
        dim: the projected dimension.
        scale: optional (d_out, d_in) per-coordinate factor applied before projecting (F^(-1/2)).
        backend: "auto" (= "blocked") or "reference".

    Returns:
        (N, dim) float64: out[n] = Σ_j P[:, j] · scale_j · (g_nᵀ x_n)_j, the slabs formed in float32.
    """
    if backend not in BACKENDS:
        raise ValueError(f"projected_linear_gradient: backend must be one of {BACKENDS}, got {backend!r}")
    for name, value in (("x", x), ("g", g)):
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.dtype not in FLOAT_DTYPES:
            got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a float32, bfloat16 or float16 tensor of shape (N, T, d), got {got}")
    if x.shape[:2] != g.shape[:2] or x.device != g.device:
        raise ValueError(f"x and g must share (N, T) and a device, got {tuple(x.shape)} on {x.device} and "
                         f"{tuple(g.shape)} on {g.device}")
    d_out, d_in = g.shape[2], x.shape[2]
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    if bucket.numel() != d_out * d_in or sign.numel() != d_out * d_in:
        raise ValueError(f"bucket and sign need d_out·d_in = {d_out * d_in} entries, got {bucket.numel()} and "
                         f"{sign.numel()}")
    if scale is not None and tuple(scale.shape) != (d_out, d_in):
        raise ValueError(f"scale must have shape ({d_out}, {d_in}), got {tuple(scale.shape)}")
    return _projected_linear_gradient_op(x, g, bucket, sign, dim, scale, backend)
