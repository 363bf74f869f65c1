"""Low-level ops: one function per fused op, dispatching to CUDA / Triton / C++ / a PyTorch reference.

Every fused op takes backend="auto" | "cpp" | "cuda" | "triton" | "reference" (projected_linear_gradient: "auto" |
"blocked" | "reference"); last_backend(op_name) says which one ran. Which function each backend runs is data in
registry.py; each op is also a torch.library custom op torch.ops.unlearn_fast.<op> (library.py), so torch.compile
traces through it.
"""
from ._backend import BackendUnavailableError, available_backends, last_backend
from .denoising_loss import denoising_loss
from .linear_fisher import linear_fisher_diag
from .noise import gaussian_noise
from .noisy_input import noisy_input
from .projected_linear_gradient import projected_linear_gradient

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "denoising_loss",
    "gaussian_noise",
    "last_backend",
    "linear_fisher_diag",
    "noisy_input",
    "projected_linear_gradient",
]
