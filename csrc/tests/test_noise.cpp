// Tests of the torch-free noise core (philox.h, noise_cpu.cpp), run by CTest. No framework: each failed CHECK prints
// its location and the process exits non-zero.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "noise.h"
#include "philox.h"

using namespace unlearn_fast;


// Known-answer vectors of Random123 (kat_vectors: philox4x32 10 <ctr[4]> <key[2]> <out[4]>).
static void test_philox_known_answers() {
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& kat : kats) {
    const Philox4x32 out = philox4x32_10(Philox4x32{{kat.ctr[0], kat.ctr[1], kat.ctr[2], kat.ctr[3]}}, kat.key[0],
                                         kat.key[1]);
    for (int i = 0; i < 4; ++i) {
      CHECK(out.v[i] == kat.out[i], "ctr %08x..., word %d: got %08x, want %08x", kat.ctr[0], i, out.v[i], kat.out[i]);
    }
  }
}

// Every row equals gaussian_noise4 at its own counters, whatever else is in the batch, for float32 and float64.
static void test_rows_follow_the_spec() {
  const uint64_t seed = 0x0123456789abcdefULL;
  const int64_t numel = 4 * 9 + 3;  // odd tail
  const std::vector<int64_t> ids = {7, 0, 4294967295LL, 7};
  const std::vector<int64_t> steps = {3, 0, 4294967295LL, 3};
  const std::vector<uint8_t> flips = {1, 0, 1, 0};
  const int64_t batch = static_cast<int64_t>(ids.size());
  std::vector<float> out32(batch * numel);
  std::vector<double> out64(batch * numel);
  gaussian_noise_cpu(seed, ids.data(), steps.data(), flips.data(), batch, numel, out32.data());
  gaussian_noise_cpu(seed, ids.data(), steps.data(), flips.data(), batch, numel, out64.data());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t e = 0; e < numel; ++e) {
      double z[4];
      gaussian_noise4(seed, static_cast<uint32_t>(e / 4), static_cast<uint32_t>(ids[b]),
                      static_cast<uint32_t>(steps[b]), flips[b], z);
      CHECK(out64[b * numel + e] == z[e % 4], "row %lld element %lld", (long long)b, (long long)e);
      CHECK(out32[b * numel + e] == static_cast<float>(z[e % 4]), "row %lld element %lld", (long long)b, (long long)e);
    }
  }
  // Rows 0 and 3 differ only in the flip.
  int same = 0;
  for (int64_t e = 0; e < numel; ++e) same += out64[e] == out64[3 * numel + e];
  CHECK(same == 0, "flip 0 and flip 1 share %d values", same);
}

// Same inputs, same output (the OpenMP schedule must not matter); a different seed gives different noise.
static void test_deterministic_and_seeded() {
  const int64_t batch = 64, numel = 1001;
  std::vector<int64_t> ids(batch), steps(batch), flips(batch);
  for (int64_t b = 0; b < batch; ++b) ids[b] = b, steps[b] = b % 10, flips[b] = b % 2;
  std::vector<float> a(batch * numel), b(batch * numel), c(batch * numel);
  gaussian_noise_cpu(42, ids.data(), steps.data(), flips.data(), batch, numel, a.data());
  gaussian_noise_cpu(42, ids.data(), steps.data(), flips.data(), batch, numel, b.data());
  gaussian_noise_cpu(43, ids.data(), steps.data(), flips.data(), batch, numel, c.data());
  int64_t equal_ab = 0, equal_ac = 0;
  for (size_t i = 0; i < a.size(); ++i) equal_ab += a[i] == b[i], equal_ac += a[i] == c[i];
  CHECK(equal_ab == static_cast<int64_t>(a.size()), "two identical calls differ at %lld places",
        (long long)(a.size() - equal_ab));
  CHECK(equal_ac == 0, "seeds 42 and 43 share %lld values", (long long)equal_ac);
}

// Mean, variance and tails of 2^22 draws. Standard errors: mean 1/sqrt(n) = 4.9e-4, variance sqrt(2/n) = 6.9e-4;
// the bounds are 6 standard errors, so a correct generator fails with probability ~1e-9.
static void test_moments() {
  const int64_t batch = 256, numel = 1 << 14;
  const double n = static_cast<double>(batch * numel);
  std::vector<int64_t> ids(batch), steps(batch, 5), flips(batch, 0);
  for (int64_t b = 0; b < batch; ++b) ids[b] = 1000 + b;
  std::vector<float> out(batch * numel);
  gaussian_noise_cpu(7, ids.data(), steps.data(), flips.data(), batch, numel, out.data());
  double sum = 0, sum2 = 0, beyond2 = 0;
  for (float x : out) sum += x, sum2 += double(x) * x, beyond2 += std::fabs(x) > 2.0f;
  const double mean = sum / n, var = sum2 / n - mean * mean, tail = beyond2 / n;
  CHECK(std::fabs(mean) < 6 / std::sqrt(n), "mean %g", mean);
  CHECK(std::fabs(var - 1) < 6 * std::sqrt(2 / n), "variance %g", var);
  // P(|z| > 2) = 0.0455003; binomial standard error sqrt(p(1-p)/n) = 1.0e-4.
  CHECK(std::fabs(tail - 0.0455003) < 6 * std::sqrt(0.0455003 * (1 - 0.0455003) / n), "P(|z|>2) %g", tail);
}

int main() {
  test_philox_known_answers();
  test_rows_follow_the_spec();
  test_deterministic_and_seeded();
  test_moments();
  if (check_failures() == 0) std::printf("test_noise: all checks passed\n");
  return check_failures() == 0 ? 0 : 1;
}
