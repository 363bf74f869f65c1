// CUDA diagonal Fisher of a Linear layer (contract in linear_fisher.h). One block per 32 x 32 output tile walks the
// examples in order; per example it stages token chunks of g and x (converted to float32) in shared memory and each
// thread accumulates 4 entries of that example's gradient tile in registers, then adds their squares to its float32
// accumulators. No atomics and a fixed order: bit-for-bit reproducible. No torch includes: compiles alone with nvcc.
// Parallelism is over output tiles only (a 1024 x 256 K/V projection gives 256 blocks; a 64 x 64 layer only 4).
#include "linear_fisher.h"

namespace unlearn_fast {
namespace {

constexpr int kTile = 32;                       // output tile kTile (o) x kTile (i)
constexpr int kChunkT = 32;                     // tokens staged per step
constexpr int kThreads = 256;                   // thread (ty, tx): column i = tx, rows o = ty + 8k, k < 4
constexpr int kRowsPerThread = kTile * kTile / kThreads;

template <typename in_t>
__global__ void linear_fisher_kernel(const in_t* __restrict__ x, Strides3 xs, const in_t* __restrict__ g, Strides3 gs,
                                     FisherShape shape, float* __restrict__ weight_sq, float* __restrict__ bias_sq) {
  __shared__ float x_tile[kChunkT][kTile];
  __shared__ float g_tile[kChunkT][kTile];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile, o0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const bool with_bias = bias_sq != nullptr && blockIdx.x == 0 && tx == 0;
  float sq[kRowsPerThread] = {}, bias[kRowsPerThread] = {};
  for (int64_t n = 0; n < shape.n; ++n) {
    float grad[kRowsPerThread] = {}, grad_bias[kRowsPerThread] = {};
    for (int64_t t0 = 0; t0 < shape.t; t0 += kChunkT) {
      for (int e = threadIdx.x; e < kChunkT * kTile; e += kThreads) {
        const int t = e / kTile, d = e % kTile;
        const bool t_ok = t0 + t < shape.t;
        x_tile[t][d] = t_ok && i0 + d < shape.d_in ? to_float(x[n * xs.n + (t0 + t) * xs.t + (i0 + d) * xs.d]) : 0.0f;
        g_tile[t][d] = t_ok && o0 + d < shape.d_out ? to_float(g[n * gs.n + (t0 + t) * gs.t + (o0 + d) * gs.d]) : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int t = 0; t < kChunkT; ++t) {
        const float xv = x_tile[t][tx];
#pragma unroll
        for (int k = 0; k < kRowsPerThread; ++k) {
          const float gv = g_tile[t][ty + 8 * k];
          grad[k] += gv * xv;
          grad_bias[k] += gv;  // only kept by the bias owners; cheaper than a branch
        }
      }
      __syncthreads();  // the tiles are overwritten by the next chunk
    }
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      sq[k] += grad[k] * grad[k];
      bias[k] += grad_bias[k] * grad_bias[k];
    }
  }
  const int64_t i = i0 + tx;
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int64_t o = o0 + ty + 8 * k;
    if (o < shape.d_out) {
      if (i < shape.d_in) weight_sq[o * shape.d_in + i] = sq[k];
      if (with_bias) bias_sq[o] = bias[k];
    }
  }
}

}  // namespace

template <typename in_t>
cudaError_t linear_fisher_cuda(const in_t* x, Strides3 x_strides, const in_t* g, Strides3 g_strides, FisherShape shape,
                               float* weight_sq, float* bias_sq, cudaStream_t stream) {
  if (shape.d_out == 0 || shape.d_in == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>((shape.d_in + kTile - 1) / kTile),
                  static_cast<unsigned int>((shape.d_out + kTile - 1) / kTile));  // d_out < 2^21: checked by callers
  linear_fisher_kernel<in_t><<<grid, kThreads, 0, stream>>>(x, x_strides, g, g_strides, shape, weight_sq, bias_sq);
  return cudaGetLastError();
}

#define UF_INSTANTIATE(in_t)                                                                                      \
  template cudaError_t linear_fisher_cuda<in_t>(const in_t*, Strides3, const in_t*, Strides3, FisherShape, float*, \
                                                float*, cudaStream_t);
UF_INSTANTIATE(float)
UF_INSTANTIATE(bfloat16_t)
UF_INSTANTIATE(float16_t)
#undef UF_INSTANTIATE

}  // namespace unlearn_fast
