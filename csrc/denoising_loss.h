// Fused per-row denoising loss on raw pointers (no torch): the C++/OpenMP and CUDA entry points behind
// unlearn_fast.ops.denoising_loss.
//
// loss[b] = mean over the C * H * W elements of (pred - target)^2 in float32, with eps and the mirrored x0' exactly as
// in noisy_input.h (eps regenerated in-kernel, never stored), and
//   target = eps                        (epsilon prediction)
//   target = a[b] * eps - s[b] * x0'    (v prediction)
// pred and x0 are read through arbitrary strides. Each row is reduced in a fixed order that depends only on the
// sample shape, so a row's loss has the same bits whatever the batch size, order or thread count.
#pragma once

#include <cstdint>

#include "noisy_input.h"

namespace unlearn_fast {

// pred_t, x0_t: float, bfloat16_t or float16_t (all nine pairs are instantiated). out: B float32 losses.
template <typename pred_t, typename x0_t>
void denoising_loss_cpu(const pred_t* pred, Strides4 pred_strides, const x0_t* x0, Strides4 x0_strides,
                        NoisyRows rows, bool v_prediction, int64_t batch, Chw shape, float* out);

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
// All pointers on the current CUDA device; enqueued on `stream`. Returns the launch status.
template <typename pred_t, typename x0_t>
cudaError_t denoising_loss_cuda(const pred_t* pred, Strides4 pred_strides, const x0_t* x0, Strides4 x0_strides,
                                NoisyRows rows, bool v_prediction, int64_t batch, Chw shape, float* out,
                                cudaStream_t stream);
#endif

}  // namespace unlearn_fast
