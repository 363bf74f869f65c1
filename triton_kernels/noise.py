"""Counter-based Gaussian noise in Triton: Philox4x32-10 + Box-Muller.

Follows the noise spec of unlearn_fast/ops/noise_reference.py (the oracle) and csrc/philox.h bit for bit. The jitted
helpers `philox4x32_10`, `box_muller` and `gaussian_noise4` are meant to be called from fused kernels that regenerate the
noise in-kernel instead of reading it from memory.

Box-Muller runs in float64, as in every backend: float32 math cannot stay within 1e-6 of the spec (csrc/philox.h has
the measurements). tl.log/sqrt/sin/cos on float64 lower to CUDA libdevice's double-precision functions.

Runs compiled on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before this module was imported
(triton.jit decides between compiling and interpreting when the decorator runs).
"""
import math

import torch
import triton
import triton.language as tl

PHILOX_M0: tl.constexpr = 0xD2511F53  # round multipliers
PHILOX_M1: tl.constexpr = 0xCD9E8D57
PHILOX_W0: tl.constexpr = 0x9E3779B9  # key increments (Weyl sequence)
PHILOX_W1: tl.constexpr = 0xBB67AE85
TWO_POW_M32: tl.constexpr = 2.0**-32
TWO_PI: tl.constexpr = 2.0 * math.pi  # a Python float: Triton materialises it directly in float64 below

GROUPS_PER_PROGRAM = 256  # each group is one Philox call = 4 consecutive elements


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Random123 constants) of uint32 counters under uint32 key (k0, k1); returns 4 uint32 words."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, PHILOX_M0)
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo0 = c0 * PHILOX_M0  # uint32 arithmetic wraps mod 2^32: the low word of the product
        lo1 = c2 * PHILOX_M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def box_muller(w0, w1, w2, w3):
    """Four standard normals (float64) from four uint32 words; u(w) = (w + 0.5) * 2^-32 is exact in float64."""
    u0 = (w0.to(tl.float64) + 0.5) * TWO_POW_M32
    u1 = (w1.to(tl.float64) + 0.5) * TWO_POW_M32
    u2 = (w2.to(tl.float64) + 0.5) * TWO_POW_M32
    u3 = (w3.to(tl.float64) + 0.5) * TWO_POW_M32
    r01 = tl.sqrt(-2.0 * tl.log(u0))
    r23 = tl.sqrt(-2.0 * tl.log(u2))
    a01 = TWO_PI * u1
    a23 = TWO_PI * u3
    return r01 * tl.cos(a01), r01 * tl.sin(a01), r23 * tl.cos(a23), r23 * tl.sin(a23)


@triton.jit
def gaussian_noise4(k0, k1, group, example_id, timestep_index, flip):
    """Noise of elements 4*group .. 4*group+3 of one sample, all arguments uint32 (key = low/high words of the seed)."""
    w0, w1, w2, w3 = philox4x32_10(group, example_id, timestep_index, flip, k0, k1)
    return box_muller(w0, w1, w2, w3)


@triton.jit(do_not_specialize=["k0", "k1"])  # one compiled kernel for every seed
def _gaussian_noise_kernel(out_ptr, ids_ptr, timestep_ptr, flips_ptr, k0, k1, numel, blocks_per_row,
                           GROUPS: tl.constexpr):
    # A flat grid over (row, block of groups): unlike grid axis 1, axis 0 does not cap the batch size at 65535.
    pid = tl.program_id(0)
    row = pid // blocks_per_row
    block = pid % blocks_per_row
    example_id = tl.load(ids_ptr + row).to(tl.uint32)
    timestep_index = tl.load(timestep_ptr + row).to(tl.uint32)
    flip = tl.load(flips_ptr + row).to(tl.uint32)
    group = block.to(tl.uint32) * GROUPS + tl.arange(0, GROUPS).to(tl.uint32)  # < 2^32: no int32 overflow
    z0, z1, z2, z3 = gaussian_noise4(k0.to(tl.uint32), k1.to(tl.uint32), group, example_id, timestep_index, flip)
    # Interleave to element order (z0, z1, z2, z3 of group g are elements 4g .. 4g+3) for contiguous stores.
    z = tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))
    element = block.to(tl.int64) * (4 * GROUPS) + tl.arange(0, 4 * GROUPS)
    tl.store(out_ptr + row.to(tl.int64) * numel + element, z.to(out_ptr.dtype.element_ty), mask=element < numel)


def gaussian_noise_triton(
    seed: int,
    ids: torch.Tensor,
    timestep_idx: torch.Tensor,
    flips: torch.Tensor,
    numel: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise of shape (B, numel) for rows (ids[b], timestep_idx[b], flips[b]); inputs are validated by ops.gaussian_noise."""
    if ids.device.type == "cpu" and isinstance(_gaussian_noise_kernel, triton.runtime.JITFunction):  # compiled, not interpreted
        raise RuntimeError("unlearn_fast.triton_kernels.noise runs on CPU tensors only when TRITON_INTERPRET=1 was set before it was imported")
    out = torch.empty((ids.numel(), numel), dtype=dtype, device=ids.device)
    blocks_per_row = triton.cdiv(numel, 4 * GROUPS_PER_PROGRAM)
    grid = (ids.numel() * blocks_per_row,)
    if grid[0] > 0:
        _gaussian_noise_kernel[grid](out, ids, timestep_idx, flips, seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, numel,
                                     blocks_per_row, GROUPS=GROUPS_PER_PROGRAM)
    return out
