// Diagonal Fisher of a Linear layer without per-example gradients (no torch): the C++/OpenMP and CUDA entry points
// behind unlearn_fast.ops.linear_fisher_diag.
//
// For per-example layer inputs x (N, T, d_in) and gradients g = dL_n/dy (N, T, d_out) of each example's own loss
// w.r.t. the layer output y = x W^T + b:
//   weight_sq[o][i] = sum_n (sum_t g[n][t][o] * x[n][t][i])^2      (the squared per-example weight gradient, summed)
//   bias_sq[o]      = sum_n (sum_t g[n][t][o])^2                   (only when bias_sq is not null)
// Each output tile computes one example's gradient tile in float32 registers/local memory, squares it and adds it to
// its accumulator, one example after another: no (N, d_out, d_in) tensor exists. x and g are read through arbitrary
// element strides. The summation order depends only on the shapes, never on the thread count or schedule (no atomics),
// so results are bit-for-bit reproducible on a given backend.
#pragma once

#include <cstdint>

#include "noisy_input.h"  // bfloat16_t, float16_t, to_float

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace unlearn_fast {

// Element strides of an (N, T, D) tensor.
struct Strides3 {
  int64_t n, t, d;
};

struct FisherShape {
  int64_t n, t, d_in, d_out;
};

// in_t: float, bfloat16_t or float16_t, the same for x and g. weight_sq: d_out * d_in float32, row-major;
// bias_sq: d_out float32, or null to skip the bias. Both are overwritten.
template <typename in_t>
void linear_fisher_cpu(const in_t* x, Strides3 x_strides, const in_t* g, Strides3 g_strides, FisherShape shape,
                       float* weight_sq, float* bias_sq);

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
// All pointers on the current CUDA device; enqueued on `stream`. Returns the launch status.
template <typename in_t>
cudaError_t linear_fisher_cuda(const in_t* x, Strides3 x_strides, const in_t* g, Strides3 g_strides, FisherShape shape,
                               float* weight_sq, float* bias_sq, cudaStream_t stream);
#endif

}  // namespace unlearn_fast
