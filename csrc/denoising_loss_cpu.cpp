// C++/OpenMP fused denoising loss (contract in denoising_loss.h). Each (row, tile) work item regenerates its eps into a
// stack buffer and writes one partial sum; rows then add their tiles in order, so the result does not depend on the
// OpenMP schedule. Squared differences are float32 (as in the reference), sums float64: next to the float64 noise
// math the wider accumulator costs nothing and keeps the rounding of long rows negligible.
#include "denoising_loss.h"

#include <algorithm>
#include <vector>

namespace unlearn_fast {

template <typename pred_t, typename x0_t>
void denoising_loss_cpu(const pred_t* pred, Strides4 pred_strides, const x0_t* x0, Strides4 x0_strides,
                        NoisyRows keys, TargetCoefficients target, int64_t batch, Chw shape, float* out) {
  const int64_t numel = shape.c * shape.h * shape.w;
  const int64_t tiles = (numel + kCpuTile - 1) / kCpuTile;
  std::vector<double> partial(static_cast<size_t>(batch * tiles));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t start = t * kCpuTile, count = std::min(kCpuTile, numel - start);
      float eps[kCpuTile];
      noise_tile(keys, b, start, count, eps);
      const float c_eps = target.c_eps[b], c_x = target.c_x[b];
      const bool flip = keys.flips[b] != 0;
      double sum = 0.0;
      for_each_image_row(shape, start, count, [&](int64_t i, int64_t c, int64_t h, int64_t w, int64_t n) {
        const x0_t* x = x0 + mirrored_offset(x0_strides, b, c, h, w, shape.w, flip);
        const int64_t x_step = flip ? -x0_strides.w : x0_strides.w;
        const pred_t* p = pred + mirrored_offset(pred_strides, b, c, h, w, shape.w, false);  // pred is never mirrored
        for (int64_t k = 0; k < n; ++k) {
          const float diff =
              to_float(p[k * pred_strides.w]) - loss_target(c_eps, eps[i + k], c_x, to_float(x[k * x_step]));
          sum += static_cast<double>(diff * diff);
        }
      });
      partial[b * tiles + t] = sum;
    }
  }
  for (int64_t b = 0; b < batch; ++b) {
    double sum = 0.0;
    for (int64_t t = 0; t < tiles; ++t) sum += partial[b * tiles + t];
    out[b] = static_cast<float>(sum / static_cast<double>(numel));
  }
}

#define UF_INSTANTIATE(pred_t, x0_t)                                                                        \
  template void denoising_loss_cpu<pred_t, x0_t>(const pred_t*, Strides4, const x0_t*, Strides4, NoisyRows, \
                                                 TargetCoefficients, int64_t, Chw, float*);
#define UF_INSTANTIATE_ALL_X0(pred_t) \
  UF_INSTANTIATE(pred_t, float) UF_INSTANTIATE(pred_t, bfloat16_t) UF_INSTANTIATE(pred_t, float16_t)
UF_INSTANTIATE_ALL_X0(float)
UF_INSTANTIATE_ALL_X0(bfloat16_t)
UF_INSTANTIATE_ALL_X0(float16_t)
#undef UF_INSTANTIATE_ALL_X0
#undef UF_INSTANTIATE

}  // namespace unlearn_fast
