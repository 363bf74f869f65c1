// CUDA fused noisy input (contract in noisy_input.h): one thread per (row, group of 4 elements) regenerates the four
// noise values of its Philox call in registers and reads x0 mirrored through its strides. No torch includes: compiles
// standalone with nvcc.
#include <algorithm>

#include "noisy_input.h"

namespace unlearn_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this many blocks

template <typename in_t, typename out_t>
__global__ void noisy_input_kernel(const in_t* __restrict__ x0, Strides4 st, NoisyRows rows, int64_t batch, Chw shape,
                                   int64_t groups, out_t* __restrict__ out) {
  const int64_t numel = shape.c * shape.h * shape.w;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < batch * groups; i += stride) {
    const int64_t b = i / groups;
    const int64_t g = i - b * groups;
    const bool flip = rows.flips[b] != 0;
    double z[4];
    gaussian_noise4(rows.seed, static_cast<uint32_t>(g), static_cast<uint32_t>(rows.ids[b]),
                    static_cast<uint32_t>(rows.timestep_idx[b]), static_cast<uint32_t>(flip), z);
    const float a = rows.a[b], s = rows.s[b];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t e = 4 * g + k;
      if (e < numel) {
        const int64_t w = e % shape.w, h = (e / shape.w) % shape.h, c = e / (shape.w * shape.h);
        const float x = to_float(x0[mirrored_offset(st, b, c, h, w, shape.w, flip)]);
        out[b * numel + e] = from_float<out_t>(a * x + s * static_cast<float>(z[k]));
      }
    }
  }
}

}  // namespace

template <typename in_t, typename out_t>
cudaError_t noisy_input_cuda(const in_t* x0, Strides4 x0_strides, NoisyRows rows, int64_t batch, Chw shape,
                             out_t* out, cudaStream_t stream) {
  const int64_t groups = (shape.c * shape.h * shape.w + 3) / 4;
  const int64_t total = batch * groups;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
  noisy_input_kernel<in_t, out_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(x0, x0_strides, rows, batch,
                                                                                             shape, groups, out);
  return cudaGetLastError();
}

#define UF_INSTANTIATE(in_t, out_t)                                                                              \
  template cudaError_t noisy_input_cuda<in_t, out_t>(const in_t*, Strides4, NoisyRows, int64_t, Chw, out_t*, \
                                                     cudaStream_t);
#define UF_INSTANTIATE_ALL_OUT(in_t) \
  UF_INSTANTIATE(in_t, float) UF_INSTANTIATE(in_t, bfloat16_t) UF_INSTANTIATE(in_t, float16_t)
UF_INSTANTIATE_ALL_OUT(float)
UF_INSTANTIATE_ALL_OUT(bfloat16_t)
UF_INSTANTIATE_ALL_OUT(float16_t)
#undef UF_INSTANTIATE_ALL_OUT
#undef UF_INSTANTIATE

}  // namespace unlearn_fast
