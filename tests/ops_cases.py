"""Backend scaffolding shared by the fused-op tests (noisy_input, denoising_loss, linear_fisher_diag)."""
import pytest
import torch

from unlearn_fast import ops
from unlearn_fast.ops import _backend

HAS_EXT = _backend.native() is not None
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="unlearn_fast._C is not built")
CPU_BACKENDS = ["reference"] + (["cpp"] if HAS_EXT else [])


def _on_cuda(backend: str):
    # The GPU check comes first: without a GPU, available_backends("cuda") still lists triton if it is installed.
    if not torch.cuda.is_available():
        return pytest.param(backend, marks=pytest.mark.gpu)  # skipped without a GPU (conftest)
    if backend not in ops.available_backends("cuda"):
        return pytest.param(backend, marks=[pytest.mark.gpu, pytest.mark.skip(reason=f"{backend} backend not available")])
    return pytest.param(backend, marks=pytest.mark.gpu)


# parametrize("backend", CUDA_BACKENDS): each GPU backend, skipped where this machine cannot run it.
CUDA_BACKENDS = [_on_cuda(backend) for backend in ("cuda", "triton")]
