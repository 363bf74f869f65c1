// Counter-based Gaussian noise: Philox4x32-10 + Box-Muller, header-only, shared by the C++ (OpenMP) and CUDA paths.
//
// Noise spec -- identical in every backend (unlearn_fast/ops/noise_reference.py is the oracle; triton_kernels/noise.py
// and every fused kernel that regenerates noise in-kernel must follow it bit for bit):
//   key     = (seed & 0xFFFFFFFF, seed >> 32)                      seed: 64-bit unsigned
//   counter = (element / 4, example_id, timestep_index, flip)     each word 32-bit
//   (w0, w1, w2, w3) = Philox4x32-10(counter, key)                  Random123 constants below
//   u(w)    = (w + 0.5) * 2^-32                                     float64, exact, in (0, 1)
//   z0, z1  = sqrt(-2 ln u(w0)) * (cos, sin)(2 pi u(w1))
//   z2, z3  = sqrt(-2 ln u(w2)) * (cos, sin)(2 pi u(w3))
//   noise[element] = z[element % 4], computed in float64 and rounded once to the output type.
//
// Why float64 for the Box-Muller math, on GPUs too: float32 cannot stay within 1e-6 of the spec. Measured over 2^20
// samples: plain float32 differs by up to 2.1e-5 (u(w) rounds to 1 near the top of the range, so ln u -> 0); even a
// careful float32 version (log1p near 1, quadrant reduction of the angle) reaches 6.0e-7 with numpy's correctly rounded
// libm, which leaves no room for the few-ulp errors of GPU float32 math (nvcc --use_fast_math, which setup.py passes,
// even turns sinf into the approximate __sinf). In float64, all backends round to the same float32 value.
// No torch includes: this header is compiled by g++, nvcc and CMake alike.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define UF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UF_HOST_DEVICE inline
#endif

namespace unlearn_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // round multipliers
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key increments (Weyl sequence)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4x32 {
  uint32_t v[4];
};

UF_HOST_DEVICE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123's philox4x32_R(10, ...)).
UF_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kPhiloxM0, ctr.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kPhiloxM1, ctr.v[2], &hi1);
    ctr = Philox4x32{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return ctr;
}

// (w + 0.5) * 2^-32: exact in float64, strictly inside (0, 1) so the logarithm is finite.
UF_HOST_DEVICE double uniform_open01(uint32_t w) { return (static_cast<double>(w) + 0.5) * 2.3283064365386962890625e-10; }

// Four standard normals from four Philox words (two Box-Muller pairs), in float64.
UF_HOST_DEVICE void box_muller(const Philox4x32& w, double z[4]) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double r01 = sqrt(-2.0 * log(uniform_open01(w.v[0])));
  const double r23 = sqrt(-2.0 * log(uniform_open01(w.v[2])));
  const double a01 = kTwoPi * uniform_open01(w.v[1]);
  const double a23 = kTwoPi * uniform_open01(w.v[3]);
  z[0] = r01 * cos(a01);
  z[1] = r01 * sin(a01);
  z[2] = r23 * cos(a23);
  z[3] = r23 * sin(a23);
}

// Noise for elements 4 * group .. 4 * group + 3 of the sample (example_id, timestep_index, flip).
UF_HOST_DEVICE void gaussian_noise4(uint64_t seed, uint32_t group, uint32_t example_id, uint32_t timestep_index,
                                    uint32_t flip, double z[4]) {
  const Philox4x32 words = philox4x32_10(Philox4x32{{group, example_id, timestep_index, flip}},
                                         static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(words, z);
}

}  // namespace unlearn_fast
