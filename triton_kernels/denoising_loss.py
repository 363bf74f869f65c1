"""Fused denoising loss in Triton: per-row mean((pred - target)^2), target = c_eps * eps + c_x * x0', eps in-kernel.

Follows unlearn_fast/ops/denoising_loss_reference.py (the oracle), with the eps and the mirrored x0' of
triton_kernels/noisy_input.py. One program per row walks the row in blocks and reduces once at the end, in an order
that depends only on the sample shape: a row's loss is the same for any batch, with no atomics.

Runs compiled on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before this module was imported.
"""
import torch
import triton
import triton.language as tl

from .noisy_input import GROUPS_PER_PROGRAM, check_runnable, noise_block, sample_offsets


@triton.jit(do_not_specialize=["k0", "k1"])  # one compiled kernel for every seed
def _denoising_loss_kernel(out_ptr, pred_ptr, x0_ptr, c_eps_ptr, c_x_ptr, ids_ptr, timestep_ptr, flips_ptr, k0, k1,
                           numel, H, W, pred_stride_b, pred_stride_c, pred_stride_h, pred_stride_w, x0_stride_b,
                           x0_stride_c, x0_stride_h, x0_stride_w, blocks_per_row, GROUPS: tl.constexpr):
    row = tl.program_id(0)
    c_eps = tl.load(c_eps_ptr + row)
    c_x = tl.load(c_x_ptr + row)
    acc = tl.zeros((4 * GROUPS,), dtype=tl.float32)
    for block in range(0, blocks_per_row):
        element, eps, flip = noise_block(ids_ptr, timestep_ptr, flips_ptr, k0, k1, row, block, GROUPS)
        mask = element < numel
        pred_offsets = sample_offsets(element, row, H, W, pred_stride_b, pred_stride_c, pred_stride_h, pred_stride_w, 0)
        pred = tl.load(pred_ptr + pred_offsets, mask=mask).to(tl.float32)
        x0_offsets = sample_offsets(element, row, H, W, x0_stride_b, x0_stride_c, x0_stride_h, x0_stride_w, flip)
        x = tl.load(x0_ptr + x0_offsets, mask=mask).to(tl.float32)
        diff = pred - (c_eps * eps + c_x * x)
        acc += tl.where(mask, diff * diff, 0.0)
    tl.store(out_ptr + row, tl.sum(acc, axis=0) / numel)


def denoising_loss_triton(pred, x0, c_eps, c_x, seed, ids, timestep_idx, flips):
    """Per-row loss of shape (B,), float32; inputs are validated by ops.denoising_loss."""
    check_runnable(_denoising_loss_kernel, x0.device, __name__)
    batch, _, height, width = x0.shape
    out = torch.empty(batch, dtype=torch.float32, device=x0.device)
    if batch > 0:
        numel = x0[0].numel()
        _denoising_loss_kernel[(batch,)](out, pred, x0, c_eps, c_x, ids, timestep_idx, flips, seed & 0xFFFFFFFF,
                                         (seed >> 32) & 0xFFFFFFFF, numel, height, width, *pred.stride(), *x0.stride(),
                                         triton.cdiv(numel, 4 * GROUPS_PER_PROGRAM), GROUPS=GROUPS_PER_PROGRAM)
    return out
