// Fused per-row denoising loss on raw pointers (no torch): the C++/OpenMP and CUDA entry points behind
// unlearn_fast.ops.denoising_loss.
//
// loss[b] = mean over the C * H * W elements of (pred - target)^2 in float32, with eps and the mirrored x0' exactly as
// in noisy_input.h (eps regenerated in-kernel, never stored), and
//   target = c_eps[b] * eps + c_x[b] * x0'
// each product and the sum rounded to float32 (epsilon prediction: (1, 0), exactly eps; v prediction: (a, -s); flow
// matching: (1, -1)). pred and x0 are read through arbitrary strides; x0 is always read. Each row is reduced in a
// fixed order that depends only on the sample shape, so a row's loss has the same bits whatever the batch size, order
// or thread count.
#pragma once

#include <cstdint>

#include "noisy_input.h"

namespace unlearn_fast {

// The per-row coefficients of the target, both of length B.
struct TargetCoefficients {
  const float* c_eps;
  const float* c_x;
};

// pred_t, x0_t: float, bfloat16_t or float16_t (all nine pairs are instantiated). keys: the noise keys of the rows (its
// coefficients a and s are not read). out: B float32 losses.
template <typename pred_t, typename x0_t>
void denoising_loss_cpu(const pred_t* pred, Strides4 pred_strides, const x0_t* x0, Strides4 x0_strides,
                        NoisyRows keys, TargetCoefficients target, int64_t batch, Chw shape, float* out);

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
// All pointers on the current CUDA device; enqueued on `stream`. Returns the launch status.
template <typename pred_t, typename x0_t>
cudaError_t denoising_loss_cuda(const pred_t* pred, Strides4 pred_strides, const x0_t* x0, Strides4 x0_strides,
                                NoisyRows keys, TargetCoefficients target, int64_t batch, Chw shape, float* out,
                                cudaStream_t stream);
#endif

// target = c_eps * eps + c_x * x, each operation rounded to float32. The products are kept apart from the sum so that
// no fused multiply-add can merge them: with (1, 0) the result is exactly eps (for finite x).
UF_HOST_DEVICE float loss_target(float c_eps, float eps, float c_x, float x) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(c_eps, eps), __fmul_rn(c_x, x));
#else
  const volatile float from_eps = c_eps * eps;
  const volatile float from_x = c_x * x;
  return from_eps + from_x;
#endif
}

}  // namespace unlearn_fast
