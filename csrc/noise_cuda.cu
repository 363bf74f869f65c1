// CUDA counter-based Gaussian noise (spec in philox.h); float64 Box-Muller as on the CPU, so float32 output matches
// the C++ path and the PyTorch reference. No torch includes: compiles standalone with nvcc.
#include <algorithm>

#include "noise.h"
#include "philox.h"

namespace unlearn_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this many blocks

// One thread per (row, group of 4 elements), over a flat grid-stride range: no 65535 cap on the batch size.
template <typename scalar_t, typename flip_t>
__global__ void gaussian_noise_kernel(uint64_t seed, const int64_t* __restrict__ ids,
                                      const int64_t* __restrict__ timestep_idx, const flip_t* __restrict__ flips,
                                      int64_t batch, int64_t numel, int64_t groups, scalar_t* __restrict__ out) {
  const int64_t total = batch * groups;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t b = i / groups;
    const int64_t g = i - b * groups;
    double z[4];
    gaussian_noise4(seed, static_cast<uint32_t>(g), static_cast<uint32_t>(ids[b]),
                    static_cast<uint32_t>(timestep_idx[b]), static_cast<uint32_t>(flips[b]), z);
    // Scalar stores: a row starts 4-element aligned only when numel % 4 == 0, and the float64 math dominates anyway.
    scalar_t* dst = out + b * numel + 4 * g;
    const int64_t count = numel - 4 * g;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k < count) dst[k] = static_cast<scalar_t>(z[k]);
    }
  }
}

}  // namespace

template <typename scalar_t, typename flip_t>
cudaError_t gaussian_noise_cuda(uint64_t seed, const int64_t* ids, const int64_t* timestep_idx, const flip_t* flips,
                                int64_t batch, int64_t numel, scalar_t* out, cudaStream_t stream) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t total = batch * groups;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
  gaussian_noise_kernel<scalar_t, flip_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      seed, ids, timestep_idx, flips, batch, numel, groups, out);
  return cudaGetLastError();
}

template cudaError_t gaussian_noise_cuda<float, int64_t>(uint64_t, const int64_t*, const int64_t*, const int64_t*,
                                                         int64_t, int64_t, float*, cudaStream_t);
template cudaError_t gaussian_noise_cuda<float, uint8_t>(uint64_t, const int64_t*, const int64_t*, const uint8_t*,
                                                         int64_t, int64_t, float*, cudaStream_t);
template cudaError_t gaussian_noise_cuda<double, int64_t>(uint64_t, const int64_t*, const int64_t*, const int64_t*,
                                                          int64_t, int64_t, double*, cudaStream_t);
template cudaError_t gaussian_noise_cuda<double, uint8_t>(uint64_t, const int64_t*, const int64_t*, const uint8_t*,
                                                          int64_t, int64_t, double*, cudaStream_t);

}  // namespace unlearn_fast
