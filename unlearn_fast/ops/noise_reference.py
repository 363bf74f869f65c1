"""Pure-PyTorch counter-based Gaussian noise: the oracle every other backend is tested against.

Noise spec (shared bit-for-bit with csrc/philox.h, csrc/noise_cuda.cu and triton_kernels/noise.py):

    key     = (seed & 0xFFFFFFFF, seed >> 32)                      seed in [0, 2**64)
    counter = (element // 4, example_id, timestep_index, flip)    each word in [0, 2**32)
    (w0, w1, w2, w3) = Philox4x32-10(counter, key)                  Random123 constants
    u(w)    = (w + 0.5) / 2**32                                     float64, exact, in (0, 1)
    z0, z1  = sqrt(-2 ln u(w0)) * (cos, sin)(2 pi u(w1))
    z2, z3  = sqrt(-2 ln u(w2)) * (cos, sin)(2 pi u(w3))
    noise[element] = z[element % 4], computed in float64 and rounded once to the output dtype.

Everything here runs on int64 tensors holding uint32 values: the 32x32-bit Philox products are split into 16-bit
halves so that no intermediate overflows int64.
"""
from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # key increments (Weyl sequence)
PHILOX_ROUNDS = 10


def _mulhilo32(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product m * x, for a uint32 constant m and uint32 values x (int64)."""
    p_lo = m * (x & 0xFFFF)  # < 2**48
    p_hi = m * (x >> 16)  # < 2**48
    t = (p_lo >> 16) + p_hi  # the product is t * 2**16 + (p_lo & 0xFFFF)
    return t >> 16, ((t & 0xFFFF) << 16) | (p_lo & 0xFFFF)


def philox4x32_10(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 of counters (int64 tensors of uint32 values, broadcastable) under key (k0, k1)."""
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def box_muller(
    w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four standard normals (float64) from four uint32 words."""

    def uniform(w):  # (w + 0.5) * 2**-32 is exact in float64 and never 0 or 1
        return (w.to(torch.float64) + 0.5) * 2.0**-32

    r01 = torch.sqrt(-2.0 * torch.log(uniform(w0)))
    r23 = torch.sqrt(-2.0 * torch.log(uniform(w2)))
    a01 = (2.0 * math.pi) * uniform(w1)
    a23 = (2.0 * math.pi) * uniform(w3)
    return r01 * torch.cos(a01), r01 * torch.sin(a01), r23 * torch.cos(a23), r23 * torch.sin(a23)


def gaussian_noise_reference(
    seed: int,
    ids: torch.Tensor,
    timestep_idx: torch.Tensor,
    flips: torch.Tensor,
    numel: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise of shape (B, numel) for rows (ids[b], timestep_idx[b], flips[b]); inputs are validated by ops.gaussian_noise."""
    device = ids.device
    groups = (numel + 3) // 4
    c0 = torch.arange(groups, dtype=torch.int64, device=device).unsqueeze(0)
    c1, c2, c3 = (x.to(torch.int64).unsqueeze(1) for x in (ids, timestep_idx, flips))
    words = philox4x32_10(c0, c1, c2, c3, seed & MASK32, (seed >> 32) & MASK32)
    z = torch.stack(box_muller(*words), dim=-1).reshape(len(ids), 4 * groups)
    return z[:, :numel].to(dtype).contiguous()
