// Tests of the torch-free fused denoising loss (denoising_loss.h, denoising_loss_cpu.cpp), run by CTest: both
// prediction types against a float64 loss over the unfused composition, and rows independent of the batch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "denoising_loss.h"
#include "noise.h"

using namespace unlearn_fast;


static void test_matches_unfused_loss() {
  const int64_t batch = 4;
  const uint64_t seed = 99;
  const std::vector<int64_t> ids = {8, 8, 1, 123456}, steps = {2, 2, 0, 999}, flips = {1, 0, 0, 1};
  const std::vector<float> a = {0.8f, 0.8f, 0.999f, 0.05f}, s = {0.6f, 0.6f, 0.045f, 0.9987f};
  const NoisyRows rows{seed, ids.data(), steps.data(), flips.data(), a.data(), s.data()};
  for (const Chw shape : {Chw{3, 5, 7}, Chw{4, 33, 31}}) {  // the second spans tiles that start mid image row
    const int64_t numel = shape.c * shape.h * shape.w;
    const Strides4 x_st{numel, 1, shape.w * shape.c, shape.c};           // channels-last x0
    const Strides4 p_st{shape.h * shape.w, batch * shape.h * shape.w, shape.w, 1};  // pred stored (C, B, H, W)
    std::vector<float> x0(batch * numel), pred(batch * numel), eps(batch * numel);
    for (size_t i = 0; i < x0.size(); ++i) x0[i] = std::cos(0.11f * static_cast<float>(i));
    for (size_t i = 0; i < pred.size(); ++i) pred[i] = std::sin(0.7f * static_cast<float>(i));
    gaussian_noise_cpu(seed, ids.data(), steps.data(), flips.data(), batch, numel, eps.data());
    for (const bool v_prediction : {false, true}) {
      std::vector<float> loss(batch);
      denoising_loss_cpu(pred.data(), p_st, x0.data(), x_st, rows, v_prediction, batch, shape, loss.data());
      for (int64_t b = 0; b < batch; ++b) {
        double want = 0.0;
        for (int64_t c = 0; c < shape.c; ++c) {
          for (int64_t h = 0; h < shape.h; ++h) {
            for (int64_t w = 0; w < shape.w; ++w) {
              const double e = eps[b * numel + (c * shape.h + h) * shape.w + w];
              const double x = x0[b * x_st.b + c * x_st.c + h * x_st.h + (flips[b] ? shape.w - 1 - w : w) * x_st.w];
              const double target = v_prediction ? double(a[b]) * e - double(s[b]) * x : e;
              const double d = pred[b * p_st.b + c * p_st.c + h * p_st.h + w * p_st.w] - target;
              want += d * d;
            }
          }
        }
        want /= static_cast<double>(numel);
        CHECK(std::fabs(loss[b] - want) <= 1e-6 * want, "v=%d row %lld: %.9g vs %.9g", v_prediction, (long long)b,
              loss[b], want);
      }
      // The last row alone (a batch of one, the pointers shifted to it) gives the same bits.
      const NoisyRows row3{seed, ids.data() + 3, steps.data() + 3, flips.data() + 3, a.data() + 3, s.data() + 3};
      float alone = 0.0f;
      denoising_loss_cpu(pred.data() + 3 * p_st.b, p_st, x0.data() + 3 * x_st.b, x_st, row3, v_prediction, 1, shape,
                         &alone);
      CHECK(alone == loss[3], "row 3 alone %.9g, in the batch %.9g", alone, loss[3]);
    }
  }
}

int main() {
  test_matches_unfused_loss();
  if (check_failures() == 0) std::printf("test_denoising_loss: all checks passed\n");
  return check_failures() == 0 ? 0 : 1;
}
