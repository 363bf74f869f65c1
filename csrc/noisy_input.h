// Fused noisy input x_t = a_t * x0' + s_t * eps on raw pointers (no torch): the C++/OpenMP and CUDA entry points behind
// unlearn_fast.ops.noisy_input, and the host/device pieces denoising_loss shares with it.
//
// Row b of x0 is a (C, H, W) sample read through arbitrary element strides; x0' is that sample mirrored along W when
// flips[b] = 1 (read mirrored, never copied). eps is regenerated in-kernel: element e = (c * H + h) * W + w of row b is
// gaussian_noise4(seed, e / 4, ids[b], timestep_idx[b], flips[b])[e % 4] rounded to float32 -- exactly the float32
// output of gaussian_noise (philox.h). All arithmetic is float32; out is contiguous (B, C, H, W).
// Callers validate: ids and timestep_idx in [0, 2^32), flips in {0, 1}, C * H * W <= 2^34.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "philox.h"

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace unlearn_fast {

// 16-bit float storage types with the bit layout of torch.bfloat16 / torch.float16; converted in software (the same
// integer code on host and device, so no dependence on cuda_fp16.h or on the host CPU's F16C support).
struct bfloat16_t {
  uint16_t bits;
};
struct float16_t {
  uint16_t bits;
};

UF_HOST_DEVICE uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

UF_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

UF_HOST_DEVICE float to_float(float x) { return x; }
UF_HOST_DEVICE float to_float(bfloat16_t x) { return bits_float(static_cast<uint32_t>(x.bits) << 16); }
UF_HOST_DEVICE float to_float(float16_t x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1Fu, mantissa = x.bits & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return bits_float(float_bits(magnitude) | sign);
  }
  if (exponent == 31) return bits_float(sign | 0x7F800000u | (mantissa << 13));  // inf, nan
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

template <typename T>
UF_HOST_DEVICE T from_float(float x);
template <>
UF_HOST_DEVICE float from_float<float>(float x) {
  return x;
}
// Round to nearest even, as torch does; nan stays nan.
template <>
UF_HOST_DEVICE bfloat16_t from_float<bfloat16_t>(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bfloat16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
  return bfloat16_t{static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}
// Round to nearest even (F. Giesen's float_to_half_fast3_rtne): overflow to inf, subnormals through a float add.
template <>
UF_HOST_DEVICE float16_t from_float<float16_t>(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t magnitude = u & 0x7FFFFFFFu;
  uint32_t half;
  if (magnitude >= 0x47800000u) {  // >= 2^16 (the normal path below rounds [65520, 2^16) up to inf itself)
    half = magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u;
  } else if (magnitude < 0x38800000u) {  // below 2^-14: subnormal or zero. Adding 0.5f, whose ulp is 2^-24 (the
    // half subnormal step), makes the FPU round the 10 mantissa bits to nearest even.
    half = float_bits(bits_float(magnitude) + 0.5f) - 0x3F000000u;
  } else {
    magnitude += 0xC8000FFFu + ((magnitude >> 13) & 1u);  // rebias the exponent (-112 << 23) and round to nearest even
    half = magnitude >> 13;
  }
  return float16_t{static_cast<uint16_t>(half | sign)};
}

// Strides (in elements) of a (B, C, H, W) tensor; any values torch allows (0 for expanded dimensions included).
struct Strides4 {
  int64_t b, c, h, w;
};

// Offset of x0'[b, c, h, w]: the W axis is read backwards when the row is flipped.
UF_HOST_DEVICE int64_t mirrored_offset(const Strides4& st, int64_t b, int64_t c, int64_t h, int64_t w, int64_t width,
                                       bool flip) {
  return b * st.b + c * st.c + h * st.h + (flip ? width - 1 - w : w) * st.w;
}

// The per-row keys of the noise and the coefficients of x_t = a[b] * x0' + s[b] * eps, all of length B.
struct NoisyRows {
  uint64_t seed;
  const int64_t* ids;
  const int64_t* timestep_idx;
  const int64_t* flips;
  const float* a;
  const float* s;
};

// Sample shape (C, H, W).
struct Chw {
  int64_t c, h, w;
};

// in_t, out_t: float, bfloat16_t or float16_t (all nine pairs are instantiated).
template <typename in_t, typename out_t>
void noisy_input_cpu(const in_t* x0, Strides4 x0_strides, NoisyRows rows, int64_t batch, Chw shape, out_t* out);

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
// All pointers on the current CUDA device; enqueued on `stream`. Returns the launch status.
template <typename in_t, typename out_t>
cudaError_t noisy_input_cuda(const in_t* x0, Strides4 x0_strides, NoisyRows rows, int64_t batch, Chw shape,
                             out_t* out, cudaStream_t stream);
#endif

// ---- CPU tiling shared with denoising_loss_cpu.cpp -------------------------------------------------------------------

// Elements per CPU work item. A multiple of 4, so every tile starts on a Philox group; fixed (not derived from the
// thread count), so per-row reductions over tiles give the same bits for any thread count and batch.
constexpr int64_t kCpuTile = 2048;

// eps of flat elements start .. start + count - 1 of row b, as float32 (start % 4 == 0).
inline void noise_tile(const NoisyRows& rows, int64_t b, int64_t start, int64_t count, float* eps) {
  for (int64_t i = 0; i < count; i += 4) {
    double z[4];
    gaussian_noise4(rows.seed, static_cast<uint32_t>((start + i) / 4), static_cast<uint32_t>(rows.ids[b]),
                    static_cast<uint32_t>(rows.timestep_idx[b]), static_cast<uint32_t>(rows.flips[b]), z);
    for (int64_t k = 0; k < 4 && i + k < count; ++k) eps[i + k] = static_cast<float>(z[k]);
  }
}

// Calls fn(i, c, h, w, n) for each run of n tile elements i .. i + n - 1 (flat start + i ..) that lie on one image row:
// they are (c, h, w), (c, h, w + 1), ... Callers turn a run into pointer offsets and a stride once, not per element.
template <typename Fn>
inline void for_each_image_row(Chw shape, int64_t start, int64_t count, Fn&& fn) {
  const int64_t plane = shape.h * shape.w;
  int64_t c = start / plane, h = (start % plane) / shape.w, w = start % shape.w;
  for (int64_t i = 0; i < count;) {
    const int64_t n = std::min(count - i, shape.w - w);
    fn(i, c, h, w, n);
    i += n;
    w = 0;
    if (++h == shape.h) h = 0, ++c;
  }
}

}  // namespace unlearn_fast
