"""Diagonal Fisher of a Linear layer in Triton: sum_n (g_n^T x_n)^2 without per-example gradients in memory.

Follows unlearn_fast/ops/linear_fisher_reference.py (the oracle). One program per BLOCK_O x BLOCK_I output tile walks
the examples in order; per example, tl.dot over token chunks builds the gradient tile in registers (float32
accumulation), then its square is added. No atomics: deterministic.

Runs compiled on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before this module was imported.
"""
import os

import torch
import triton
import triton.language as tl

from .noisy_input import check_runnable

BLOCK_O, BLOCK_I, BLOCK_T = 32, 32, 16  # tl.dot needs every dimension >= 16


@triton.jit
def _linear_fisher_kernel(weight_ptr, bias_ptr, x_ptr, g_ptr, N, T, D_IN, D_OUT, x_stride_n, x_stride_t, x_stride_d,
                          g_stride_n, g_stride_t, g_stride_d, BIAS: tl.constexpr, UPCAST: tl.constexpr,
                          BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_i = tl.program_id(0)
    pid_o = tl.program_id(1)
    i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    sq = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    bias_sq = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for n in range(0, N):
        x_row = x_ptr + tl.cast(n, tl.int64) * x_stride_n
        g_row = g_ptr + tl.cast(n, tl.int64) * g_stride_n
        grad = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
        grad_bias = tl.zeros((BLOCK_O,), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            # g is read transposed, (BLOCK_O, BLOCK_T), so the tile is one plain dot.
            g_t = tl.load(g_row + o[:, None] * g_stride_d + t[None, :] * g_stride_t,
                          mask=(o[:, None] < D_OUT) & (t[None, :] < T), other=0.0)
            x = tl.load(x_row + t[:, None] * x_stride_t + i[None, :] * x_stride_d,
                        mask=(t[:, None] < T) & (i[None, :] < D_IN), other=0.0)
            if UPCAST:
                grad = tl.dot(g_t.to(tl.float32), x.to(tl.float32), grad, input_precision="ieee")
            else:
                grad = tl.dot(g_t, x, grad)
            if BIAS:
                grad_bias += tl.sum(g_t.to(tl.float32), axis=1)
        sq += grad * grad
        if BIAS:
            bias_sq += grad_bias * grad_bias
    tl.store(weight_ptr + o[:, None] * D_IN + i[None, :], sq, mask=(o[:, None] < D_OUT) & (i[None, :] < D_IN))
    if BIAS and pid_i == 0:
        tl.store(bias_ptr + o, bias_sq, mask=o < D_OUT)


def linear_fisher_triton(x, g, bias):
    """(weight_sq, bias_sq or None), float32; inputs are validated by ops.linear_fisher_diag."""
    check_runnable(_linear_fisher_kernel, x.device, __name__)
    n, t, d_in = x.shape
    d_out = g.shape[2]
    weight_sq = torch.empty(d_out, d_in, dtype=torch.float32, device=x.device)
    bias_sq = torch.empty(d_out, dtype=torch.float32, device=x.device) if bias else None
    # float32: exact IEEE products, no TF32. 16-bit products are exact in float32, so the tensor-core dot loses
    # nothing, except that the interpreter mis-multiplies bfloat16 dots (numpy has no bfloat16): upcast there.
    upcast = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")
    grid = (triton.cdiv(d_in, BLOCK_I), triton.cdiv(d_out, BLOCK_O))
    _linear_fisher_kernel[grid](weight_sq, bias_sq if bias else weight_sq, x, g, n, t, d_in, d_out, *x.stride(),
                                *g.stride(), BIAS=bias, UPCAST=upcast, BLOCK_O=BLOCK_O,
                                BLOCK_I=BLOCK_I, BLOCK_T=BLOCK_T)
    return weight_sq, bias_sq
