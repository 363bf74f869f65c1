"""linear_fisher_diag: the diagonal Fisher of a Linear layer from its inputs and output gradients, without ever
holding the (N, d_out, d_in) per-example gradients.

Spec in linear_fisher_reference.py (the oracle); fast paths in csrc/ (C++/OpenMP, CUDA) and triton_kernels/
(registered in registry.py; the op is the torch.library custom op unlearn_fast::linear_fisher_diag), each computing
one output tile at a time: per example, the gradient tile g_n^T x_n in registers, squared and accumulated.
unlearn_fast.engine.fisher_hooks.diagonal_fisher feeds it from hooks on a model's Linear layers.
"""
from __future__ import annotations

import torch

from . import registry
from .library import NAMESPACE
from .noisy_input import FLOAT_DTYPES

_MAX_D_OUT = 65535 * 32  # the CUDA grid's y dimension holds the output tiles


# A custom op returns tensors, not None: [weight_sq] or [weight_sq, bias_sq], made a pair again by linear_fisher_diag.
@torch.library.custom_op(f"{NAMESPACE}::linear_fisher_diag", mutates_args=())
def _linear_fisher_diag_op(x: torch.Tensor, g: torch.Tensor, bias: bool, backend: str) -> list[torch.Tensor]:
    weight_sq, bias_sq = registry.run("linear_fisher_diag", backend, x.device, x, g, bias)
    return [weight_sq, bias_sq] if bias else [weight_sq]


@_linear_fisher_diag_op.register_fake
def _(x, g, bias, backend):
    weight_sq = x.new_empty((g.shape[2], x.shape[2]), dtype=torch.float32)
    return [weight_sq, x.new_empty((g.shape[2],), dtype=torch.float32)] if bias else [weight_sq]


def linear_fisher_diag(
    x: torch.Tensor, g: torch.Tensor, *, bias: bool = False, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum over examples of the squared per-example gradients of a Linear layer y = x W^T + b.

    Args:
        x: the layer's inputs, (N, T, d_in): N examples of T tokens (T = 1 for a plain (N, d_in) input).
        g: dL_n/dy, (N, T, d_out): the gradient of each example's OWN loss L_n w.r.t. its outputs (backpropagate the
            sum of the per-example losses, not their mean, to get these). Same dtype as x: float32, bfloat16 or
            float16; any strides; same device.
        bias: also return the bias term.
        backend: "auto", "cpp", "cuda", "triton" or "reference" (see unlearn_fast.ops.available_backends()).

    Returns:
        (weight_sq, bias_sq): float32 (d_out, d_in) = sum_n (g_n^T x_n)^2 and (d_out,) = sum_n (sum_t g_n,t)^2, or
        None for bias_sq when bias is False. The per-example gradients are accumulated in float32.
    """
    for name, value in (("x", x), ("g", g)):
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.dtype not in FLOAT_DTYPES:
            got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a float32, bfloat16 or float16 tensor of shape (N, T, d), got {got}")
    if x.shape[:2] != g.shape[:2]:
        raise ValueError(f"x and g must share (N, T), got {tuple(x.shape)} and {tuple(g.shape)}")
    if x.dtype != g.dtype or x.device != g.device:
        raise ValueError(f"x and g must have one dtype and device, got {x.dtype} on {x.device} and {g.dtype} on "
                         f"{g.device}")
    if x.shape[2] == 0 or not 0 < g.shape[2] <= _MAX_D_OUT:
        raise ValueError(f"d_in must be >= 1 and d_out in [1, {_MAX_D_OUT}], got {x.shape[2]} and {g.shape[2]}")
    weight_sq, *bias_sq = _linear_fisher_diag_op(x, g, bool(bias), backend)
    return weight_sq, (bias_sq[0] if bias else None)
