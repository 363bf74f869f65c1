"""projected_linear_gradient's "blocked" backend: plain PyTorch (batched matmul + index_add), so it runs everywhere.

It walks the input features in blocks: per block it forms only the (N, d_out, block) slab of Σ_tokens g ⊗ x (one
batched matmul), scales it by s and the signs, and scatters it into the `dim` buckets (index_add, float64 sums).
Memory: one slab (SLAB_BYTES), whatever d_in. Inputs are validated by ops.projected_linear_gradient.
"""
from __future__ import annotations

import torch

SLAB_BYTES = 8 * 2**20  # the (N, d_out, block) float32 slab of per-example gradients


def projected_linear_gradient_blocked(x: torch.Tensor, g: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor,
                                      dim: int, scale: torch.Tensor | None) -> torch.Tensor:
    """(N, dim) float64, as projected_linear_gradient_reference, without the dense projection."""
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
