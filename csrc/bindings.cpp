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

#include "noise.h"

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
  m.def("has_cuda", &has_cuda, "Whether this build includes the CUDA kernels.");
  m.def("openmp_threads", &openmp_threads, "Threads the C++ kernels use (OpenMP max threads; 1 without OpenMP).");
}
