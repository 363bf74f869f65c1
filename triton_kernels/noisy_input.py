"""Fused noisy input in Triton: x_t = a_t * x0' + s_t * eps with eps regenerated in-kernel (never read from memory).

Follows unlearn_fast/ops/noisy_input_reference.py (the oracle). eps comes from the noise helpers of
triton_kernels/noise.py, so it is bit-for-bit the float32 output of gaussian_noise; x0 is read through its strides,
mirrored along W on flipped rows. The jitted helpers `noise_block` and `sample_offsets` are shared with
triton_kernels/denoising_loss.py.

Runs compiled on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before this module was imported.
"""
import torch
import triton
import triton.language as tl

from .noise import gaussian_noise4

GROUPS_PER_PROGRAM = 256  # each group is one Philox call = 4 consecutive elements


@triton.jit
def noise_block(ids_ptr, timestep_ptr, flips_ptr, k0, k1, row, block, GROUPS: tl.constexpr):
    """(element, eps, flip) for the flat elements block*4*GROUPS + arange(4*GROUPS) of `row`: eps in float32, exactly
    gaussian_noise's values; flip is the row's flip (uint32)."""
    example_id = tl.load(ids_ptr + row).to(tl.uint32)
    timestep_index = tl.load(timestep_ptr + row).to(tl.uint32)
    flip = tl.load(flips_ptr + row).to(tl.uint32)
    group = tl.cast(block, tl.uint32) * GROUPS + tl.arange(0, GROUPS).to(tl.uint32)  # < 2^32: no int32 overflow
    z0, z1, z2, z3 = gaussian_noise4(k0.to(tl.uint32), k1.to(tl.uint32), group, example_id, timestep_index, flip)
    # Element order: z0, z1, z2, z3 of group g are elements 4g .. 4g+3.
    eps = tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3)).to(tl.float32)
    element = tl.cast(block, tl.int64) * (4 * GROUPS) + tl.arange(0, 4 * GROUPS)
    return element, eps, flip


@triton.jit
def sample_offsets(element, row, H, W, stride_b, stride_c, stride_h, stride_w, flip):
    """Offsets of x[row, c, h, w'] for flat elements (c * H + h) * W + w, with w' = W - 1 - w when flip != 0."""
    w = element % W
    h = (element // W) % H
    c = element // (W * H)
    w = tl.where(flip != 0, W - 1 - w, w)
    return row.to(tl.int64) * stride_b + c * stride_c + h * stride_h + w * stride_w


@triton.jit(do_not_specialize=["k0", "k1"])  # one compiled kernel for every seed
def _noisy_input_kernel(out_ptr, x0_ptr, a_ptr, s_ptr, ids_ptr, timestep_ptr, flips_ptr, k0, k1, numel, H, W,
                        stride_b, stride_c, stride_h, stride_w, blocks_per_row, GROUPS: tl.constexpr):
    # A flat grid over (row, block of groups): unlike grid axis 1, axis 0 does not cap the batch size at 65535.
    pid = tl.program_id(0)
    row = pid // blocks_per_row
    block = pid % blocks_per_row
    element, eps, flip = noise_block(ids_ptr, timestep_ptr, flips_ptr, k0, k1, row, block, GROUPS)
    mask = element < numel
    x = tl.load(x0_ptr + sample_offsets(element, row, H, W, stride_b, stride_c, stride_h, stride_w, flip), mask=mask)
    x_t = tl.load(a_ptr + row) * x.to(tl.float32) + tl.load(s_ptr + row) * eps
    tl.store(out_ptr + row.to(tl.int64) * numel + element, x_t.to(out_ptr.dtype.element_ty), mask=mask)


def check_runnable(kernel, device: torch.device, module: str) -> None:
    """Triton kernels run on CPU tensors only if this process imported them under TRITON_INTERPRET=1."""
    if device.type == "cpu" and isinstance(kernel, triton.runtime.JITFunction):  # compiled, not interpreted
        raise RuntimeError(f"{module} runs on CPU tensors only when TRITON_INTERPRET=1 was set before it was imported")


def noisy_input_triton(x0, a_t, s_t, seed, ids, timestep_idx, flips, out_dtype):
    """x_t of shape (B, C, H, W), contiguous; inputs are validated by ops.noisy_input."""
    check_runnable(_noisy_input_kernel, x0.device, __name__)
    batch, _, height, width = x0.shape
    numel = x0[0].numel() if batch else 0
    out = torch.empty(x0.shape, dtype=out_dtype, device=x0.device)
    blocks_per_row = triton.cdiv(numel, 4 * GROUPS_PER_PROGRAM)
    grid = (batch * blocks_per_row,)
    if grid[0] > 0:
        _noisy_input_kernel[grid](out, x0, a_t, s_t, ids, timestep_idx, flips, seed & 0xFFFFFFFF,
                                  (seed >> 32) & 0xFFFFFFFF, numel, height, width, *x0.stride(), blocks_per_row,
                                  GROUPS=GROUPS_PER_PROGRAM)
    return out
