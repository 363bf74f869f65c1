// Counter-based Gaussian noise on raw pointers (no torch): the C++/OpenMP and CUDA entry points behind
// unlearn_fast.ops.gaussian_noise. The noise spec is in philox.h.
//
// Row b of out (numel contiguous elements, row-major) is the noise of sample (ids[b], timestep_idx[b], flips[b]).
// Callers validate ranges: ids and timestep_idx in [0, 2^32), flips in {0, 1}, numel <= 2^34 (element / 4 < 2^32).
#pragma once

#include <cstdint>

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace unlearn_fast {

// scalar_t: float or double; flip_t: int64_t or uint8_t (torch.bool / torch.uint8 flips).
template <typename scalar_t, typename flip_t>
void gaussian_noise_cpu(uint64_t seed, const int64_t* ids, const int64_t* timestep_idx, const flip_t* flips,
                        int64_t batch, int64_t numel, scalar_t* out);

#if defined(UNLEARN_FAST_WITH_CUDA) || defined(__CUDACC__)
// All pointers on the current CUDA device; enqueued on `stream`. Returns the launch status.
template <typename scalar_t, typename flip_t>
cudaError_t gaussian_noise_cuda(uint64_t seed, const int64_t* ids, const int64_t* timestep_idx, const flip_t* flips,
                                int64_t batch, int64_t numel, scalar_t* out, cudaStream_t stream);
#endif

}  // namespace unlearn_fast
