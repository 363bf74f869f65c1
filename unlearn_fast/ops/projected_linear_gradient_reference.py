"""Pure-PyTorch projected per-example gradient of a Linear layer: the oracle of ops.projected_linear_gradient.

For layer inputs x (N, T, d_in) and output gradients g (N, T, d_out) of each example's own loss, example n's weight
gradient is G_n = g_nᵀ x_n (d_out, d_in). With a per-coordinate scale s (d_out, d_in) (e.g. F^(-1/2)) and the sparse
projection given by bucket b and sign σ (one per weight coordinate, row-major),

    out[n] = P · vec(s ⊙ G_n),   P (dim, d_out·d_in) dense with P[b_j, j] = σ_j

Everything is materialised here (G in float64, P dense): it is the spec, not a fast path.
"""
from __future__ import annotations

import torch


def dense_projection(bucket: torch.Tensor, sign: torch.Tensor, dim: int) -> torch.Tensor:
    """P (dim, len(bucket)) float64 with P[bucket[j], j] = sign[j]."""
    dense = torch.zeros(dim, bucket.numel(), dtype=torch.float64, device=bucket.device)
    dense[bucket.reshape(-1), torch.arange(bucket.numel(), device=bucket.device)] = sign.reshape(-1).double()
    return dense


def projected_linear_gradient_reference(x: torch.Tensor, g: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor,
                                        dim: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """(N, dim) float64; inputs validated by ops.projected_linear_gradient."""
    grads = torch.einsum("nto,nti->noi", g.double(), x.double())  # every per-example gradient, whole
    if scale is not None:
        grads = grads * scale.double()
    return grads.flatten(1) @ dense_projection(bucket, sign, dim).T
