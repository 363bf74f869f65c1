// Tests of the torch-free diagonal Fisher of a Linear layer (linear_fisher.h, linear_fisher_cpu.cpp), run by CTest:
// against a float64 sum of squared per-example outer products, through odd shapes spanning several tiles and token
// chunks, non-contiguous strides and bfloat16 inputs, with and without the bias.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "linear_fisher.h"

using namespace unlearn_fast;


template <typename in_t>
static void test_matches_outer_products(const char* dtype) {
  const FisherShape shape{3, 37, 70, 19};  // 2 input tiles, 2 output tiles, 2 token chunks, all partial
  const Strides3 x_st{shape.t * shape.d_in, 1, shape.t};  // x stored (N, d_in, T)
  const Strides3 g_st{0, shape.d_out, 1};                  // one g for every example (stride 0 along N)
  std::vector<in_t> x(shape.n * shape.t * shape.d_in), g(shape.t * shape.d_out);
  for (size_t k = 0; k < x.size(); ++k) x[k] = from_float<in_t>(std::cos(0.37f * static_cast<float>(k)));
  for (size_t k = 0; k < g.size(); ++k) g[k] = from_float<in_t>(std::sin(0.71f * static_cast<float>(k)));
  auto xv = [&](int64_t n, int64_t t, int64_t i) { return double(to_float(x[n * x_st.n + t * x_st.t + i * x_st.d])); };
  auto gv = [&](int64_t n, int64_t t, int64_t o) { return double(to_float(g[n * g_st.n + t * g_st.t + o * g_st.d])); };
  std::vector<float> weight_sq(shape.d_out * shape.d_in, -1.0f), bias_sq(shape.d_out, -1.0f);
  for (const bool bias : {false, true}) {
    linear_fisher_cpu(x.data(), x_st, g.data(), g_st, shape, weight_sq.data(), bias ? bias_sq.data() : nullptr);
    for (int64_t o = 0; o < shape.d_out; ++o) {
      double want_bias = 0.0;
      for (int64_t n = 0; n < shape.n; ++n) {
        double grad_bias = 0.0;
        for (int64_t t = 0; t < shape.t; ++t) grad_bias += gv(n, t, o);
        want_bias += grad_bias * grad_bias;
      }
      if (bias) {
        CHECK(std::fabs(bias_sq[o] - want_bias) <= 1e-5 * want_bias + 1e-6, "%s bias[%lld]: %.9g vs %.9g", dtype,
              (long long)o, bias_sq[o], want_bias);
      }
      for (int64_t i = 0; i < shape.d_in; ++i) {
        double want = 0.0;
        for (int64_t n = 0; n < shape.n; ++n) {
          double grad = 0.0;
          for (int64_t t = 0; t < shape.t; ++t) grad += gv(n, t, o) * xv(n, t, i);
          want += grad * grad;
        }
        const float got = weight_sq[o * shape.d_in + i];
        CHECK(std::fabs(got - want) <= 1e-5 * want + 1e-5, "%s weight[%lld][%lld]: %.9g vs %.9g", dtype,
              (long long)o, (long long)i, got, want);
      }
    }
  }
}

int main() {
  test_matches_outer_products<float>("float32");
  test_matches_outer_products<bfloat16_t>("bfloat16");
  test_matches_outer_products<float16_t>("float16");
  if (check_failures() == 0) std::printf("test_linear_fisher: all checks passed\n");
  return check_failures() == 0 ? 0 : 1;
}
