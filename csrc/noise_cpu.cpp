// C++/OpenMP counter-based Gaussian noise (spec in philox.h). Bit-identical to the PyTorch reference for float32
// output: both do the Box-Muller math in float64 and round once.
#include "noise.h"

#include <algorithm>

#include "philox.h"

namespace unlearn_fast {

template <typename scalar_t, typename flip_t>
void gaussian_noise_cpu(uint64_t seed, const int64_t* ids, const int64_t* timestep_idx, const flip_t* flips,
                        int64_t batch, int64_t numel, scalar_t* out) {
  const int64_t groups = (numel + 3) / 4;  // one Philox call per 4 consecutive elements
  // Work items are (row, group) pairs, so a batch of one large sample parallelises as well as many small ones.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t g = 0; g < groups; ++g) {
      double z[4];
      gaussian_noise4(seed, static_cast<uint32_t>(g), static_cast<uint32_t>(ids[b]),
                      static_cast<uint32_t>(timestep_idx[b]), static_cast<uint32_t>(flips[b]), z);
      scalar_t* dst = out + b * numel + 4 * g;
      const int64_t count = std::min<int64_t>(4, numel - 4 * g);
      for (int64_t k = 0; k < count; ++k) dst[k] = static_cast<scalar_t>(z[k]);
    }
  }
}

template void gaussian_noise_cpu<float, int64_t>(uint64_t, const int64_t*, const int64_t*, const int64_t*, int64_t,
                                                 int64_t, float*);
template void gaussian_noise_cpu<float, uint8_t>(uint64_t, const int64_t*, const int64_t*, const uint8_t*, int64_t,
                                                 int64_t, float*);
template void gaussian_noise_cpu<double, int64_t>(uint64_t, const int64_t*, const int64_t*, const int64_t*, int64_t,
                                                  int64_t, double*);
template void gaussian_noise_cpu<double, uint8_t>(uint64_t, const int64_t*, const int64_t*, const uint8_t*, int64_t,
                                                  int64_t, double*);

}  // namespace unlearn_fast
