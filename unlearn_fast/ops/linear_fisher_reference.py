"""Pure-PyTorch diagonal Fisher of a Linear layer: the oracle of ops.linear_fisher_diag.

For per-example layer inputs x (N, T, d_in) and output gradients g (N, T, d_out) of each example's own loss:

    weight_sq = sum_n (g_n^T x_n)^2          (d_out, d_in) float32, g_n^T x_n = example n's weight gradient
    bias_sq   = sum_n (sum_t g_n,t)^2        (d_out,) float32, example n's bias gradient squared

Per-example gradients are materialised here, a chunk of examples at a time, so memory stays bounded.
"""
from __future__ import annotations

import torch

CHUNK_BYTES = 64 * 2**20  # the (chunk, d_out, d_in) float32 block of per-example gradients


def linear_fisher_reference(x: torch.Tensor, g: torch.Tensor, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight_sq, bias_sq or None); inputs are validated by ops.linear_fisher_diag."""
    d_out, d_in = g.shape[2], x.shape[2]
    weight_sq = torch.zeros(d_out, d_in, dtype=torch.float32, device=x.device)
    bias_sq = torch.zeros(d_out, dtype=torch.float32, device=x.device) if bias else None
    chunk = max(1, CHUNK_BYTES // (4 * d_out * d_in))
    for start in range(0, x.shape[0], chunk):
        xc, gc = x[start:start + chunk].float(), g[start:start + chunk].float()
        weight_sq += torch.einsum("nto,nti->noi", gc, xc).square().sum(0)
        if bias:
            bias_sq += gc.sum(1).square().sum(0)
    return weight_sq, bias_sq
