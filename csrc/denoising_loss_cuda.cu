// CUDA fused denoising loss (contract in denoising_loss.h). One block per row: each thread regenerates the noise of its
// groups of 4 elements in registers and accumulates (pred - target)^2 in float32, then a fixed-shape tree reduction in
// shared memory adds the threads -- the order depends only on the sample shape, so a row's loss is the same for any
// batch and bit-for-bit reproducible (no atomics). No torch includes: compiles standalone with nvcc.
#include "denoising_loss.h"

namespace unlearn_fast {
namespace {

constexpr int kThreads = 256;  // a power of two, for the tree reduction
constexpr int64_t kMaxBlocks = 65535 * int64_t{1024};  // rows beyond this are taken by the grid-stride loop

template <typename pred_t, typename x0_t>
__global__ void denoising_loss_kernel(const pred_t* __restrict__ pred, Strides4 pst, const x0_t* __restrict__ x0,
                                      Strides4 xst, NoisyRows keys, TargetCoefficients target, int64_t batch,
                                      Chw shape, float* __restrict__ out) {
  __shared__ float partial[kThreads];
  const int64_t numel = shape.c * shape.h * shape.w;
  const int64_t groups = (numel + 3) / 4;
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    const bool flip = keys.flips[b] != 0;
    const float c_eps = target.c_eps[b], c_x = target.c_x[b];
    float sum = 0.0f;
    for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
      double z[4];
      gaussian_noise4(keys.seed, static_cast<uint32_t>(g), static_cast<uint32_t>(keys.ids[b]),
                      static_cast<uint32_t>(keys.timestep_idx[b]), static_cast<uint32_t>(flip), z);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t e = 4 * g + k;
        if (e < numel) {
          const int64_t w = e % shape.w, h = (e / shape.w) % shape.h, c = e / (shape.w * shape.h);
          const float x = to_float(x0[mirrored_offset(xst, b, c, h, w, shape.w, flip)]);
          const float diff = to_float(pred[mirrored_offset(pst, b, c, h, w, shape.w, false)]) -
                             loss_target(c_eps, static_cast<float>(z[k]), c_x, x);
          sum += diff * diff;
        }
      }
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) out[b] = partial[0] / static_cast<float>(numel);
    __syncthreads();  // partial[] is reused by the next row
  }
}

}  // namespace

template <typename pred_t, typename x0_t>
cudaError_t denoising_loss_cuda(const pred_t* pred, Strides4 pred_strides, const x0_t* x0, Strides4 x0_strides,
                                NoisyRows keys, TargetCoefficients target, int64_t batch, Chw shape, float* out,
                                cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const int64_t blocks = batch < kMaxBlocks ? batch : kMaxBlocks;
  denoising_loss_kernel<pred_t, x0_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      pred, pred_strides, x0, x0_strides, keys, target, batch, shape, out);
  return cudaGetLastError();
}

#define UF_INSTANTIATE(pred_t, x0_t)                                                                              \
  template cudaError_t denoising_loss_cuda<pred_t, x0_t>(const pred_t*, Strides4, const x0_t*, Strides4, NoisyRows, \
                                                         TargetCoefficients, int64_t, Chw, float*, cudaStream_t);
#define UF_INSTANTIATE_ALL_X0(pred_t) \
  UF_INSTANTIATE(pred_t, float) UF_INSTANTIATE(pred_t, bfloat16_t) UF_INSTANTIATE(pred_t, float16_t)
UF_INSTANTIATE_ALL_X0(float)
UF_INSTANTIATE_ALL_X0(bfloat16_t)
UF_INSTANTIATE_ALL_X0(float16_t)
#undef UF_INSTANTIATE_ALL_X0
#undef UF_INSTANTIATE

}  // namespace unlearn_fast
