// C++/OpenMP diagonal Fisher of a Linear layer (contract in linear_fisher.h). Threads split the output into
// kTileOut x kTileIn tiles; a tile walks the examples in order, builds each example's gradient tile from token chunks
// staged as float32 in stack buffers (zero-padded to full tile widths, so the vector loops have fixed widths), then
// adds its square. The per-example gradient is float32 like the reference's einsum; the sum of squares is float64:
// one add per (example, weight) next to T multiply-adds, and long sums over N stay accurate.
#include "linear_fisher.h"

#include <algorithm>
#include <cstring>

namespace unlearn_fast {
namespace {

constexpr int64_t kTileOut = 32, kTileIn = 64, kChunkT = 32;

// dst[t][d] = src[n][t0 + t][d0 + d] as float32 for t < nt, d < nd; zero for nd <= d < width.
template <typename in_t>
void stage_chunk(const in_t* src, Strides3 st, int64_t n, int64_t t0, int64_t nt, int64_t d0, int64_t nd, int64_t width,
                 float* dst) {
  for (int64_t t = 0; t < nt; ++t) {
    float* row = dst + t * width;
    const in_t* src_row = src + n * st.n + (t0 + t) * st.t + d0 * st.d;
    int64_t d = 0;
    if (st.d == 1) {  // the common layout: a plain loop the compiler vectorises
      for (; d < nd; ++d) row[d] = to_float(src_row[d]);
    } else {
      for (; d < nd; ++d) row[d] = to_float(src_row[d * st.d]);
    }
    for (; d < width; ++d) row[d] = 0.0f;
  }
}

// grad += gs^T xs over one chunk, in register blocks of 4 rows x 16 columns (8 vectors of 8 floats): each loaded
// x vector feeds 4 multiply-adds. setup.py compiles without -march, so on x86 an AVX2/FMA clone is chosen at run time.
typedef float float8 __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void accumulate_chunk(const float (&xs)[kChunkT][kTileIn], const float (&gs)[kChunkT][kTileOut], int64_t nt,
                      float (&grad)[kTileOut][kTileIn]) {
  for (int64_t o0 = 0; o0 < kTileOut; o0 += 4) {
    for (int64_t i0 = 0; i0 < kTileIn; i0 += 16) {
      float8 acc[4][2];
      for (int r = 0; r < 4; ++r) {
        std::memcpy(&acc[r][0], &grad[o0 + r][i0], sizeof(float8));
        std::memcpy(&acc[r][1], &grad[o0 + r][i0 + 8], sizeof(float8));
      }
      for (int64_t t = 0; t < nt; ++t) {
        float8 x0, x1;
        std::memcpy(&x0, &xs[t][i0], sizeof x0);
        std::memcpy(&x1, &xs[t][i0 + 8], sizeof x1);
        for (int r = 0; r < 4; ++r) {
          const float go = gs[t][o0 + r];
          acc[r][0] += go * x0;
          acc[r][1] += go * x1;
        }
      }
      for (int r = 0; r < 4; ++r) {
        std::memcpy(&grad[o0 + r][i0], &acc[r][0], sizeof(float8));
        std::memcpy(&grad[o0 + r][i0 + 8], &acc[r][1], sizeof(float8));
      }
    }
  }
}

}  // namespace

template <typename in_t>
void linear_fisher_cpu(const in_t* x, Strides3 x_strides, const in_t* g, Strides3 g_strides, FisherShape shape,
                       float* weight_sq, float* bias_sq) {
  const int64_t tiles_out = (shape.d_out + kTileOut - 1) / kTileOut;
  const int64_t tiles_in = (shape.d_in + kTileIn - 1) / kTileIn;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t to = 0; to < tiles_out; ++to) {
    for (int64_t ti = 0; ti < tiles_in; ++ti) {
      const int64_t o0 = to * kTileOut, i0 = ti * kTileIn;
      const int64_t no = std::min(kTileOut, shape.d_out - o0), ni = std::min(kTileIn, shape.d_in - i0);
      const bool with_bias = bias_sq != nullptr && ti == 0;  // one tile per output row owns the bias
      double sq[kTileOut][kTileIn] = {}, bias[kTileOut] = {};
      for (int64_t n = 0; n < shape.n; ++n) {
        float grad[kTileOut][kTileIn] = {}, grad_bias[kTileOut] = {};
        for (int64_t t0 = 0; t0 < shape.t; t0 += kChunkT) {
          const int64_t nt = std::min(kChunkT, shape.t - t0);
          float xs[kChunkT][kTileIn], gs[kChunkT][kTileOut];
          stage_chunk(x, x_strides, n, t0, nt, i0, ni, kTileIn, &xs[0][0]);
          stage_chunk(g, g_strides, n, t0, nt, o0, no, kTileOut, &gs[0][0]);
          accumulate_chunk(xs, gs, nt, grad);
          if (with_bias) {
            for (int64_t t = 0; t < nt; ++t) {
              for (int64_t o = 0; o < kTileOut; ++o) grad_bias[o] += gs[t][o];
            }
          }
        }
        for (int64_t o = 0; o < kTileOut; ++o) {
          for (int64_t i = 0; i < kTileIn; ++i) sq[o][i] += static_cast<double>(grad[o][i] * grad[o][i]);
          bias[o] += static_cast<double>(grad_bias[o] * grad_bias[o]);
        }
      }
      for (int64_t o = 0; o < no; ++o) {
        for (int64_t i = 0; i < ni; ++i) weight_sq[(o0 + o) * shape.d_in + i0 + i] = static_cast<float>(sq[o][i]);
        if (with_bias) bias_sq[o0 + o] = static_cast<float>(bias[o]);
      }
    }
  }
}

#define UF_INSTANTIATE(in_t)                                                                          \
  template void linear_fisher_cpu<in_t>(const in_t*, Strides3, const in_t*, Strides3, FisherShape, float*, \
                                        float*);
UF_INSTANTIATE(float)
UF_INSTANTIATE(bfloat16_t)
UF_INSTANTIATE(float16_t)
#undef UF_INSTANTIATE

}  // namespace unlearn_fast
