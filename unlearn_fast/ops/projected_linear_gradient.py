"""projected_linear_gradient: P · vec(s ⊙ g_nᵀx_n) per example for a Linear layer, without ever holding the
(N, d_out, d_in) per-example gradients or a dense projection.

Spec in projected_linear_gradient_reference.py (the oracle). The fast path walks the input features in blocks: per
block it forms only the (N, d_out, block) slab of Σ_tokens g ⊗ x (one batched matmul), scales it by s and the signs,
and scatters it into the `dim` buckets (index_add, float64 sums). Memory: one slab (SLAB_BYTES), whatever d_in.
It is plain PyTorch (batched matmul + index_add), so it runs on every device; there is no native kernel yet, so the
op has two backends, "blocked" and "reference", outside the native/Triton registry (ops/_backend.py).
engine/projected_gradients.py feeds it from hooks on a model's Linear layers (stage 1 of the two-stage AbU).
"""
from __future__ import annotations

import torch

from .noisy_input import FLOAT_DTYPES
from .projected_linear_gradient_reference import projected_linear_gradient_reference

BACKENDS = ("auto", "blocked", "reference")
SLAB_BYTES = 8 * 2**20  # the (N, d_out, block) float32 slab of per-example gradients


def _blocked(x, g, bucket, sign, dim, scale):
    n, d_out, d_in = x.shape[0], g.shape[2], x.shape[2]
    out = torch.zeros(n, dim, dtype=torch.float64, device=x.device)
    weight = sign.reshape(d_out, d_in).float()
    if scale is not None:
        weight = weight * scale.float()
    bucket = bucket.reshape(d_out, d_in)
    gt = g.float().transpose(1, 2)  # (N, d_out, T): the slab is one bmm per block
    block = max(1, min(d_in, SLAB_BYTES // (4 * max(1, n * d_out))))
    for start in range(0, d_in, block):
        cols = slice(start, start + block)
        slab = torch.bmm(gt, x[:, :, cols].float()) * weight[:, cols]  # (N, d_out, block)
        out.index_add_(1, bucket[:, cols].reshape(-1), slab.reshape(n, -1).double())
    return out


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
    if backend == "reference":
        return projected_linear_gradient_reference(x, g, bucket, sign, dim, scale)
    return _blocked(x, g, bucket, sign, dim, scale)
