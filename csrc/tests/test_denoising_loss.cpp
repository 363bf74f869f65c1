// Tests of the torch-free fused denoising loss (denoising_loss.h, denoising_loss_cpu.cpp), run by CTest: several kinds
// of target coefficients against a float64 loss over the unfused composition, (1, 0) giving exactly the epsilon loss,
// and rows independent of the batch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "denoising_loss.h"
#include "noise.h"

using namespace unlearn_fast;

namespace {

struct Kind {
  const char* name;
  std::vector<float> c_eps, c_x;
};

std::vector<Kind> coefficient_kinds(const std::vector<float>& a, const std::vector<float>& s) {
  std::vector<float> minus_s(s.size()), ones(s.size(), 1.0f), zeros(s.size(), 0.0f), minus_ones(s.size(), -1.0f);
  for (size_t b = 0; b < s.size(); ++b) minus_s[b] = -s[b];
  return {{"epsilon", ones, zeros},
          {"v", a, minus_s},
          {"flow", ones, minus_ones},
          {"random", {0.3f, -1.7f, 2.5f, 0.01f}, {-0.9f, 0.4f, 0.0f, 1.3f}}};
}

}  // namespace

static void test_matches_unfused_loss() {
  const int64_t batch = 4;
  const uint64_t seed = 99;
  const std::vector<int64_t> ids = {8, 8, 1, 123456}, steps = {2, 2, 0, 999}, flips = {1, 0, 0, 1};
  const std::vector<float> a = {0.8f, 0.8f, 0.999f, 0.05f}, s = {0.6f, 0.6f, 0.045f, 0.9987f};
  const NoisyRows keys{seed, ids.data(), steps.data(), flips.data(), nullptr, nullptr};
  for (const Chw shape : {Chw{3, 5, 7}, Chw{4, 33, 31}}) {  // the second spans tiles that start mid image row
    const int64_t numel = shape.c * shape.h * shape.w;
    const Strides4 x_st{numel, 1, shape.w * shape.c, shape.c};           // channels-last x0
    const Strides4 p_st{shape.h * shape.w, batch * shape.h * shape.w, shape.w, 1};  // pred stored (C, B, H, W)
    std::vector<float> x0(batch * numel), pred(batch * numel), eps(batch * numel);
    for (size_t i = 0; i < x0.size(); ++i) x0[i] = std::cos(0.11f * static_cast<float>(i));
    for (size_t i = 0; i < pred.size(); ++i) pred[i] = std::sin(0.7f * static_cast<float>(i));
    gaussian_noise_cpu(seed, ids.data(), steps.data(), flips.data(), batch, numel, eps.data());
    for (const Kind& kind : coefficient_kinds(a, s)) {
      const TargetCoefficients target{kind.c_eps.data(), kind.c_x.data()};
      std::vector<float> loss(batch);
      denoising_loss_cpu(pred.data(), p_st, x0.data(), x_st, keys, target, batch, shape, loss.data());
      for (int64_t b = 0; b < batch; ++b) {
        double want = 0.0;
        for (int64_t c = 0; c < shape.c; ++c) {
          for (int64_t h = 0; h < shape.h; ++h) {
            for (int64_t w = 0; w < shape.w; ++w) {
              const double e = eps[b * numel + (c * shape.h + h) * shape.w + w];
              const double x = x0[b * x_st.b + c * x_st.c + h * x_st.h + (flips[b] ? shape.w - 1 - w : w) * x_st.w];
              const double d = pred[b * p_st.b + c * p_st.c + h * p_st.h + w * p_st.w] -
                               (double(kind.c_eps[b]) * e + double(kind.c_x[b]) * x);
              want += d * d;
            }
          }
        }
        want /= static_cast<double>(numel);
        CHECK(std::fabs(loss[b] - want) <= 1e-6 * want, "%s row %lld: %.9g vs %.9g", kind.name, (long long)b,
              loss[b], want);
      }
      // The last row alone (a batch of one, the pointers shifted to it) gives the same bits.
      const NoisyRows key3{seed, ids.data() + 3, steps.data() + 3, flips.data() + 3, nullptr, nullptr};
      const TargetCoefficients target3{kind.c_eps.data() + 3, kind.c_x.data() + 3};
      float alone = 0.0f;
      denoising_loss_cpu(pred.data() + 3 * p_st.b, p_st, x0.data() + 3 * x_st.b, x_st, key3, target3, 1, shape,
                         &alone);
      CHECK(alone == loss[3], "%s: row 3 alone %.9g, in the batch %.9g", kind.name, alone, loss[3]);
    }
  }
}

// (c_eps, c_x) = (1, 0) is exactly the epsilon loss: (pred - eps)^2 in float32, summed in float64 by tiles of kCpuTile
// elements, whatever x0 holds (finite).
static void test_epsilon_coefficients_give_the_epsilon_loss_exactly() {
  const int64_t batch = 2;
  const uint64_t seed = 7;
  const std::vector<int64_t> ids = {3, 4}, steps = {5, 6}, flips = {0, 1};
  const std::vector<float> ones(batch, 1.0f), zeros(batch, 0.0f);
  const Chw shape{4, 33, 31};
  const int64_t numel = shape.c * shape.h * shape.w;
  const Strides4 st{numel, shape.h * shape.w, shape.w, 1};
  std::vector<float> x0(batch * numel), pred(batch * numel), eps(batch * numel);
  for (size_t i = 0; i < x0.size(); ++i) x0[i] = 1e30f * std::cos(0.3f * static_cast<float>(i));
  for (size_t i = 0; i < pred.size(); ++i) pred[i] = std::sin(0.7f * static_cast<float>(i));
  gaussian_noise_cpu(seed, ids.data(), steps.data(), flips.data(), batch, numel, eps.data());
  std::vector<float> loss(batch);
  denoising_loss_cpu(pred.data(), st, x0.data(), st, NoisyRows{seed, ids.data(), steps.data(), flips.data(), nullptr,
                     nullptr}, TargetCoefficients{ones.data(), zeros.data()}, batch, shape, loss.data());
  for (int64_t b = 0; b < batch; ++b) {
    double total = 0.0;
    for (int64_t start = 0; start < numel; start += kCpuTile) {
      double tile = 0.0;
      for (int64_t e = start; e < std::min(numel, start + kCpuTile); ++e) {
        const float diff = pred[b * numel + e] - eps[b * numel + e];
        tile += static_cast<double>(diff * diff);
      }
      total += tile;
    }
    const float want = static_cast<float>(total / static_cast<double>(numel));
    CHECK(loss[b] == want, "row %lld: %.9g vs the epsilon loss %.9g", (long long)b, loss[b], want);
  }
}

int main() {
  test_matches_unfused_loss();
  test_epsilon_coefficients_give_the_epsilon_loss_exactly();
  if (check_failures() == 0) std::printf("test_denoising_loss: all checks passed\n");
  return check_failures() == 0 ? 0 : 1;
}
