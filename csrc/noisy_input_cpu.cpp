// C++/OpenMP fused noisy input (contract in noisy_input.h). eps is regenerated per tile into a stack buffer, so noise
// never reaches memory; x0 is read in place through its strides, mirrored rows backwards.
#include "noisy_input.h"

#include <algorithm>

namespace unlearn_fast {

template <typename in_t, typename out_t>
void noisy_input_cpu(const in_t* x0, Strides4 x0_strides, NoisyRows rows, int64_t batch, Chw shape, out_t* out) {
  const int64_t numel = shape.c * shape.h * shape.w;
  const int64_t tiles = (numel + kCpuTile - 1) / kCpuTile;
  // Work items are (row, tile) pairs, so one large sample parallelises as well as many small ones.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t start = t * kCpuTile, count = std::min(kCpuTile, numel - start);
      float eps[kCpuTile];
      noise_tile(rows, b, start, count, eps);
      const float a = rows.a[b], s = rows.s[b];
      out_t* dst = out + b * numel + start;
      const bool flip = rows.flips[b] != 0;
      for_each_image_row(shape, start, count, [&](int64_t i, int64_t c, int64_t h, int64_t w, int64_t n) {
        const in_t* src = x0 + mirrored_offset(x0_strides, b, c, h, w, shape.w, flip);
        const int64_t step = flip ? -x0_strides.w : x0_strides.w;
        for (int64_t k = 0; k < n; ++k) dst[i + k] = from_float<out_t>(a * to_float(src[k * step]) + s * eps[i + k]);
      });
    }
  }
}

#define UF_INSTANTIATE(in_t, out_t) \
  template void noisy_input_cpu<in_t, out_t>(const in_t*, Strides4, NoisyRows, int64_t, Chw, out_t*);
#define UF_INSTANTIATE_ALL_OUT(in_t) \
  UF_INSTANTIATE(in_t, float) UF_INSTANTIATE(in_t, bfloat16_t) UF_INSTANTIATE(in_t, float16_t)
UF_INSTANTIATE_ALL_OUT(float)
UF_INSTANTIATE_ALL_OUT(bfloat16_t)
UF_INSTANTIATE_ALL_OUT(float16_t)
#undef UF_INSTANTIATE_ALL_OUT
#undef UF_INSTANTIATE

}  // namespace unlearn_fast
