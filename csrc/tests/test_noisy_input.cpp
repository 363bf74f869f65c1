// Tests of the torch-free fused noisy input (noisy_input.h, noisy_input_cpu.cpp), run by CTest: the 16-bit float
// conversions, and x_t against the unfused composition gaussian_noise_cpu -> mirror -> a * x0 + s * eps.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "noise.h"
#include "noisy_input.h"

using namespace unlearn_fast;


// Every non-nan 16-bit pattern survives the round trip through float; ties round to even; overflow gives inf.
static void test_16bit_conversions() {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float16_t h{static_cast<uint16_t>(bits)};
    if (!std::isnan(to_float(h))) {
      CHECK(from_float<float16_t>(to_float(h)).bits == bits, "float16 %04x", bits);
    }
    const bfloat16_t bf{static_cast<uint16_t>(bits)};
    if (!std::isnan(to_float(bf))) {
      CHECK(from_float<bfloat16_t>(to_float(bf)).bits == bits, "bfloat16 %04x", bits);
    }
  }
  CHECK(to_float(float16_t{0x0001}) == std::ldexp(1.0f, -24), "smallest float16 subnormal");
  CHECK(to_float(float16_t{0xC000}) == -2.0f, "float16 -2");
  CHECK(from_float<float16_t>(1.0f + std::ldexp(1.0f, -11)).bits == 0x3C00, "float16 tie to even (down)");
  CHECK(from_float<float16_t>(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3C02, "float16 tie to even (up)");
  CHECK(from_float<float16_t>(std::ldexp(3.0f, -26)).bits == 0x0001, "float16 subnormal rounding");
  CHECK(from_float<float16_t>(65519.0f).bits == 0x7BFF, "float16 max");
  CHECK(from_float<float16_t>(65520.0f).bits == 0x7C00, "float16 overflow to inf");
  CHECK(std::isnan(to_float(from_float<float16_t>(NAN))), "float16 nan");
  CHECK(from_float<bfloat16_t>(1.0f + std::ldexp(1.0f, -8)).bits == 0x3F80, "bfloat16 tie to even (down)");
  CHECK(from_float<bfloat16_t>(1.0f + 3 * std::ldexp(1.0f, -8)).bits == 0x3F82, "bfloat16 tie to even (up)");
  CHECK(std::isnan(to_float(from_float<bfloat16_t>(NAN))), "bfloat16 nan");
}

// x0 stored channels-last ((B, H, W, C) in memory, as a permuted tensor would be), odd sizes, a sample larger than one
// CPU tile whose tiles start mid image row, and flipped and unflipped rows of the same example.
static void test_matches_unfused_composition() {
  const int64_t batch = 4;
  const uint64_t seed = 0xFEEDFACE12345678ULL;
  const std::vector<int64_t> ids = {3, 3, 4294967295LL, 17}, steps = {0, 0, 9, 4}, flips = {0, 1, 1, 0};
  const std::vector<float> a = {0.9f, 0.9f, 0.25f, 1.0f}, s = {0.3f, 0.3f, 0.96f, 0.0f};
  const NoisyRows rows{seed, ids.data(), steps.data(), flips.data(), a.data(), s.data()};
  for (const Chw shape : {Chw{3, 5, 7}, Chw{4, 33, 31}}) {
    const int64_t numel = shape.c * shape.h * shape.w;
    const Strides4 st{numel, 1, shape.w * shape.c, shape.c};
    std::vector<float> x0(batch * numel);
    for (size_t i = 0; i < x0.size(); ++i) x0[i] = std::sin(0.37f * static_cast<float>(i));
    std::vector<float> eps(batch * numel), out(batch * numel);
    gaussian_noise_cpu(seed, ids.data(), steps.data(), flips.data(), batch, numel, eps.data());
    noisy_input_cpu(x0.data(), st, rows, batch, shape, out.data());
    int64_t bad = 0;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t c = 0; c < shape.c; ++c) {
        for (int64_t h = 0; h < shape.h; ++h) {
          for (int64_t w = 0; w < shape.w; ++w) {
            const int64_t e = (c * shape.h + h) * shape.w + w;
            const int64_t src_w = flips[b] ? shape.w - 1 - w : w;
            const float x = x0[b * st.b + c * st.c + h * st.h + src_w * st.w];
            bad += out[b * numel + e] != a[b] * x + s[b] * eps[b * numel + e];
          }
        }
      }
    }
    CHECK(bad == 0, "%lld of %lld values differ for shape %lldx%lldx%lld", (long long)bad, (long long)(batch * numel),
          (long long)shape.c, (long long)shape.h, (long long)shape.w);

    // 16-bit input and output: the float32 result rounded once.
    std::vector<bfloat16_t> x0_bf(x0.size());
    for (size_t i = 0; i < x0.size(); ++i) x0_bf[i] = from_float<bfloat16_t>(x0[i]);
    std::vector<float16_t> out_h(out.size());
    std::vector<float> out_from_bf(out.size());
    noisy_input_cpu(x0_bf.data(), st, rows, batch, shape, out_h.data());
    noisy_input_cpu(x0_bf.data(), st, rows, batch, shape, out_from_bf.data());
    bad = 0;
    for (size_t i = 0; i < out.size(); ++i) bad += out_h[i].bits != from_float<float16_t>(out_from_bf[i]).bits;
    CHECK(bad == 0, "%lld float16 outputs are not the rounded float32 ones", (long long)bad);
  }
}

int main() {
  test_16bit_conversions();
  test_matches_unfused_composition();
  if (check_failures() == 0) std::printf("test_noisy_input: all checks passed\n");
  return check_failures() == 0 ? 0 : 1;
}
