// unlearn_fast._C: pybind11 bindings, the only translation unit that includes torch.
// Each op adds one checked wrapper here (validate tensors, allocate outputs, dispatch CPU/CUDA to the torch-free
// kernels in <op>_cpu.cpp / <op>_cuda.cu) and one m.def line; see csrc/README.md.
#include <torch/extension.h>

#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef UNLEARN_FAST_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "denoising_loss.h"
#include "linear_fisher.h"
#include "noise.h"
#include "noisy_input.h"

namespace {

void check_row_vector(const at::Tensor& t, const char* op, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == like.size(0), op, ": ", name, " must have shape (", like.size(0),
              ",) like ids, got ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ids is on ", like.device());
}

// Dispatches a kernel call on the device of `like`; `cpu` and `cuda` are callables taking no arguments.
template <typename CpuFn, typename CudaFn>
void on_device(const char* op, const at::Tensor& like, CpuFn&& cpu, CudaFn&& cuda) {
  if (like.is_cpu()) {
    cpu();
  } else if (like.is_cuda()) {
#ifdef UNLEARN_FAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(like.device());
    const cudaError_t err = cuda(c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
#else
    (void)cuda;
    TORCH_CHECK(false, op, ": unlearn_fast._C was built without CUDA; rebuild with a CUDA torch and nvcc");
#endif
  } else {
    TORCH_CHECK(false, op, ": unsupported device ", like.device(), " (expected cpu or cuda)");
  }
}

at::Tensor gaussian_noise(uint64_t seed, const at::Tensor& ids, const at::Tensor& timestep_idx,
                          const at::Tensor& flips, int64_t numel, at::ScalarType dtype) {
  constexpr const char* op = "gaussian_noise";
  TORCH_CHECK(ids.dim() == 1, op, ": ids must be 1-D, got shape ", ids.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong, op, ": ids must be int64, got ", ids.scalar_type());
  check_row_vector(timestep_idx, op, "timestep_idx", ids);
  TORCH_CHECK(timestep_idx.scalar_type() == at::kLong, op, ": timestep_idx must be int64, got ",
              timestep_idx.scalar_type());
  check_row_vector(flips, op, "flips", ids);
  const auto flip_type = flips.scalar_type();
  TORCH_CHECK(flip_type == at::kLong || flip_type == at::kByte || flip_type == at::kBool, op,
              ": flips must be int64, uint8 or bool, got ", flip_type);
  TORCH_CHECK(numel >= 0 && numel <= (int64_t{1} << 34), op, ": numel must be in [0, 2^34], got ", numel);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": dtype must be float32 or float64, got ", dtype);

  const at::Tensor ids_c = ids.contiguous();
  const at::Tensor steps_c = timestep_idx.contiguous();
  const at::Tensor flips_c = (flip_type == at::kBool ? flips.view(at::kByte) : flips).contiguous();
  at::Tensor out = at::empty({ids.size(0), numel}, ids.options().dtype(dtype));

  AT_DISPATCH_FLOATING_TYPES(dtype, op, [&] {
    auto run = [&](const auto* flip_ptr) {
      using flip_t = std::remove_const_t<std::remove_pointer_t<decltype(flip_ptr)>>;
      on_device(
          op, ids,
          [&] {
            unlearn_fast::gaussian_noise_cpu<scalar_t, flip_t>(seed, ids_c.data_ptr<int64_t>(),
                                                               steps_c.data_ptr<int64_t>(), flip_ptr, out.size(0),
                                                               numel, out.data_ptr<scalar_t>());
          },
          [&](auto stream) {
#ifdef UNLEARN_FAST_WITH_CUDA
            return unlearn_fast::gaussian_noise_cuda<scalar_t, flip_t>(seed, ids_c.data_ptr<int64_t>(),
                                                                       steps_c.data_ptr<int64_t>(), flip_ptr,
                                                                       out.size(0), numel, out.data_ptr<scalar_t>(),
                                                                       stream);
#endif  // never instantiated without CUDA: on_device does not call it then
          });
    };
    if (flips_c.scalar_type() == at::kLong) {
      run(flips_c.data_ptr<int64_t>());
    } else {
      run(flips_c.data_ptr<uint8_t>());
    }
  });
  return out;
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls fn(Tag<storage type>{}) for a float32 / bfloat16 / float16 tensor dtype (the dtypes of the fused ops).
template <typename Fn>
void dispatch_float_storage(at::ScalarType dtype, const char* op, const char* name, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      return fn(Tag<float>{});
    case at::kBFloat16:
      return fn(Tag<unlearn_fast::bfloat16_t>{});
    case at::kHalf:
      return fn(Tag<unlearn_fast::float16_t>{});
    default:
      TORCH_CHECK(false, op, ": ", name, " must be float32, bfloat16 or float16, got ", dtype);
  }
}

unlearn_fast::Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Shared checks of the fused ops: x0 is (B, C, H, W) and the per-row inputs are (B,) on its device; ids, timestep_idx
// and flips int64 (values validated by unlearn_fast.ops), a_t and s_t float32. Returns contiguous per-row tensors.
struct RowInputs {
  at::Tensor ids, timestep_idx, flips, a_t, s_t;
  unlearn_fast::NoisyRows rows(uint64_t seed) const {
    return {seed,
            ids.data_ptr<int64_t>(),
            timestep_idx.data_ptr<int64_t>(),
            flips.data_ptr<int64_t>(),
            a_t.data_ptr<float>(),
            s_t.data_ptr<float>()};
  }
};

RowInputs check_fused_inputs(const char* op, const at::Tensor& x0, const at::Tensor& a_t, const at::Tensor& s_t,
                             const at::Tensor& ids, const at::Tensor& timestep_idx, const at::Tensor& flips) {
  TORCH_CHECK(x0.dim() == 4, op, ": x0 must have shape (B, C, H, W), got ", x0.sizes());
  TORCH_CHECK(x0.size(1) * x0.size(2) * x0.size(3) <= (int64_t{1} << 34), op,
              ": x0 samples must have at most 2^34 elements, got ", x0.sizes());
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == x0.size(0), op, ": ids must have shape (", x0.size(0),
              ",) like x0's batch, got ", ids.sizes());
  TORCH_CHECK(ids.device() == x0.device(), op, ": ids is on ", ids.device(), " but x0 is on ", x0.device());
  check_row_vector(timestep_idx, op, "timestep_idx", ids);
  check_row_vector(flips, op, "flips", ids);
  check_row_vector(a_t, op, "a_t", ids);
  check_row_vector(s_t, op, "s_t", ids);
  TORCH_CHECK(ids.scalar_type() == at::kLong, op, ": ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK(timestep_idx.scalar_type() == at::kLong, op, ": timestep_idx must be int64, got ",
              timestep_idx.scalar_type());
  TORCH_CHECK(flips.scalar_type() == at::kLong, op, ": flips must be int64, got ", flips.scalar_type());
  TORCH_CHECK(a_t.scalar_type() == at::kFloat, op, ": a_t must be float32, got ", a_t.scalar_type());
  TORCH_CHECK(s_t.scalar_type() == at::kFloat, op, ": s_t must be float32, got ", s_t.scalar_type());
  return {ids.contiguous(), timestep_idx.contiguous(), flips.contiguous(), a_t.contiguous(), s_t.contiguous()};
}

unlearn_fast::Chw chw(const at::Tensor& x) { return {x.size(1), x.size(2), x.size(3)}; }

at::Tensor noisy_input(const at::Tensor& x0, const at::Tensor& a_t, const at::Tensor& s_t, uint64_t seed,
                       const at::Tensor& ids, const at::Tensor& timestep_idx, const at::Tensor& flips,
                       at::ScalarType out_dtype) {
  constexpr const char* op = "noisy_input";
  const RowInputs in = check_fused_inputs(op, x0, a_t, s_t, ids, timestep_idx, flips);
  at::Tensor out = at::empty(x0.sizes(), x0.options().dtype(out_dtype));  // contiguous
  dispatch_float_storage(x0.scalar_type(), op, "x0", [&](auto in_tag) {
    using in_t = typename decltype(in_tag)::type;
    dispatch_float_storage(out_dtype, op, "out_dtype", [&](auto out_tag) {
      using out_t = typename decltype(out_tag)::type;
      // x0 is read in place through its strides: no .contiguous() copy.
      const auto* x = static_cast<const in_t*>(x0.data_ptr());
      auto* y = static_cast<out_t*>(out.data_ptr());
      on_device(
          op, x0, [&] { unlearn_fast::noisy_input_cpu(x, strides4(x0), in.rows(seed), x0.size(0), chw(x0), y); },
          [&](auto stream) {
#ifdef UNLEARN_FAST_WITH_CUDA
            return unlearn_fast::noisy_input_cuda(x, strides4(x0), in.rows(seed), x0.size(0), chw(x0), y, stream);
#endif
          });
    });
  });
  return out;
}

at::Tensor denoising_loss(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& c_eps, const at::Tensor& c_x,
                          uint64_t seed, const at::Tensor& ids, const at::Tensor& timestep_idx,
                          const at::Tensor& flips) {
  constexpr const char* op = "denoising_loss";
  TORCH_CHECK(x0.dim() == 4, op, ": x0 must have shape (B, C, H, W), got ", x0.sizes());
  const auto check_coefficient = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x0.size(0), op, ": ", name, " must have shape (", x0.size(0),
                ",) like x0's batch, got ", t.sizes());
    TORCH_CHECK(t.device() == x0.device(), op, ": ", name, " is on ", t.device(), " but x0 is on ", x0.device());
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  };
  check_coefficient("c_eps", c_eps);
  check_coefficient("c_x", c_x);
  // The coefficients take the places of noisy_input's a_t and s_t (already checked above, under their own names).
  const RowInputs in = check_fused_inputs(op, x0, c_eps, c_x, ids, timestep_idx, flips);
  const unlearn_fast::TargetCoefficients target{in.a_t.data_ptr<float>(), in.s_t.data_ptr<float>()};
  TORCH_CHECK(pred.sizes() == x0.sizes(), op, ": pred must have x0's shape ", x0.sizes(), ", got ", pred.sizes());
  TORCH_CHECK(pred.device() == x0.device(), op, ": pred is on ", pred.device(), " but x0 is on ", x0.device());
  TORCH_CHECK(x0.size(1) * x0.size(2) * x0.size(3) > 0, op,
              ": samples must not be empty (the mean is undefined), got ", x0.sizes());
  at::Tensor out = at::empty({x0.size(0)}, x0.options().dtype(at::kFloat));
  dispatch_float_storage(pred.scalar_type(), op, "pred", [&](auto pred_tag) {
    using pred_t = typename decltype(pred_tag)::type;
    dispatch_float_storage(x0.scalar_type(), op, "x0", [&](auto x0_tag) {
      using x0_t = typename decltype(x0_tag)::type;
      const auto* p = static_cast<const pred_t*>(pred.data_ptr());
      const auto* x = static_cast<const x0_t*>(x0.data_ptr());
      on_device(
          op, x0,
          [&] {
            unlearn_fast::denoising_loss_cpu(p, strides4(pred), x, strides4(x0), in.rows(seed), target, x0.size(0),
                                             chw(x0), out.data_ptr<float>());
          },
          [&](auto stream) {
#ifdef UNLEARN_FAST_WITH_CUDA
            return unlearn_fast::denoising_loss_cuda(p, strides4(pred), x, strides4(x0), in.rows(seed), target,
                                                     x0.size(0), chw(x0), out.data_ptr<float>(), stream);
#endif
          });
    });
  });
  return out;
}

std::tuple<at::Tensor, std::optional<at::Tensor>> linear_fisher_diag(const at::Tensor& x, const at::Tensor& g,
                                                                     bool bias) {
  constexpr const char* op = "linear_fisher_diag";
  TORCH_CHECK(x.dim() == 3 && g.dim() == 3 && x.size(0) == g.size(0) && x.size(1) == g.size(1), op,
              ": x and g must have shapes (N, T, d_in) and (N, T, d_out), got ", x.sizes(), " and ", g.sizes());
  TORCH_CHECK(x.size(2) > 0 && g.size(2) > 0 && g.size(2) <= 65535 * 32, op,
              ": d_in must be >= 1 and d_out in [1, 2097120], got ", x.size(2), " and ", g.size(2));
  TORCH_CHECK(x.scalar_type() == g.scalar_type(), op, ": x and g must have one dtype, got ", x.scalar_type(), " and ",
              g.scalar_type());
  TORCH_CHECK(x.device() == g.device(), op, ": x is on ", x.device(), " but g is on ", g.device());
  const at::Tensor weight_sq = at::empty({g.size(2), x.size(2)}, x.options().dtype(at::kFloat));
  std::optional<at::Tensor> bias_sq;
  if (bias) bias_sq = at::empty({g.size(2)}, x.options().dtype(at::kFloat));
  float* bias_ptr = bias ? bias_sq->data_ptr<float>() : nullptr;
  const unlearn_fast::FisherShape shape{x.size(0), x.size(1), x.size(2), g.size(2)};
  const unlearn_fast::Strides3 x_st{x.stride(0), x.stride(1), x.stride(2)}, g_st{g.stride(0), g.stride(1), g.stride(2)};
  dispatch_float_storage(x.scalar_type(), op, "x", [&](auto tag) {
    using in_t = typename decltype(tag)::type;
    // x and g are read in place through their strides: no .contiguous() copy.
    const auto* xp = static_cast<const in_t*>(x.data_ptr());
    const auto* gp = static_cast<const in_t*>(g.data_ptr());
    on_device(
        op, x,
        [&] { unlearn_fast::linear_fisher_cpu(xp, x_st, gp, g_st, shape, weight_sq.data_ptr<float>(), bias_ptr); },
        [&](auto stream) {
#ifdef UNLEARN_FAST_WITH_CUDA
          return unlearn_fast::linear_fisher_cuda(xp, x_st, gp, g_st, shape, weight_sq.data_ptr<float>(), bias_ptr,
                                                  stream);
#endif
        });
  });
  return {weight_sq, bias_sq};
}

bool has_cuda() {
#ifdef UNLEARN_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "unlearn_fast native ops (C++/OpenMP and CUDA). Public API: unlearn_fast.ops.";
  m.def("gaussian_noise", &gaussian_noise, py::arg("seed"), py::arg("ids"), py::arg("timestep_idx"), py::arg("flips"),
        py::arg("numel"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>(),
        "Counter-based N(0, 1) noise of shape (B, numel), Philox4x32-10 + Box-Muller (spec in csrc/philox.h).\n"
        "ids, timestep_idx: int64 (B,); flips: int64/uint8/bool (B,); all on one device; values validated by "
        "unlearn_fast.ops.gaussian_noise.");
  m.def("noisy_input", &noisy_input, py::arg("x0"), py::arg("a_t"), py::arg("s_t"), py::arg("seed"), py::arg("ids"),
        py::arg("timestep_idx"), py::arg("flips"), py::arg("out_dtype"), py::call_guard<py::gil_scoped_release>(),
        "x_t = a_t * x0' + s_t * eps, (B, C, H, W) contiguous of out_dtype, eps regenerated in-kernel and x0' = x0 "
        "mirrored along W on flipped rows (csrc/noisy_input.h). x0: float32/bfloat16/float16, any strides; a_t, s_t: "
        "float32 (B,); ids, timestep_idx, flips: int64 (B,); values validated by unlearn_fast.ops.noisy_input.");
  m.def("denoising_loss", &denoising_loss, py::arg("pred"), py::arg("x0"), py::arg("c_eps"), py::arg("c_x"),
        py::arg("seed"), py::arg("ids"), py::arg("timestep_idx"), py::arg("flips"),
        py::call_guard<py::gil_scoped_release>(),
        "Per-row float32 mean((pred - target)^2), target = c_eps * eps + c_x * x0', eps regenerated in-kernel "
        "(csrc/denoising_loss.h). pred, x0: float32/bfloat16/float16, any strides; c_eps, c_x: float32 (B,); ids, "
        "timestep_idx, flips: int64 (B,); values validated by unlearn_fast.ops.denoising_loss.");
  m.def("linear_fisher_diag", &linear_fisher_diag, py::arg("x"), py::arg("g"), py::arg("bias"),
        py::call_guard<py::gil_scoped_release>(),
        "(sum_n (g_n^T x_n)^2 (d_out, d_in), sum_n (sum_t g_n)^2 (d_out,) or None), float32, without per-example "
        "gradients (csrc/linear_fisher.h). x (N, T, d_in), g (N, T, d_out): one of float32/bfloat16/float16, any "
        "strides, one device.");
  m.def("has_cuda", &has_cuda, "Whether this build includes the CUDA kernels.");
  m.def("openmp_threads", &openmp_threads, "Threads the C++ kernels use (OpenMP max threads; 1 without OpenMP).");
}
