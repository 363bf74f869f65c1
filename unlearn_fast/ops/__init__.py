"""Low-level ops: one function per fused op, dispatching to CUDA / Triton / C++ / a PyTorch reference.

Every op takes backend="auto" | "cpp" | "cuda" | "triton" | "reference"; last_backend(op_name) says which one ran.
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
