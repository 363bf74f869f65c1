"""Every op's backends, as data: IMPLEMENTATIONS[op][backend] = "module:function", imported on first use.

The fused ops run on the kernel backends that _backend selects from (its availability rules and errors); each backend
of an op is one function with the op's own argument list, so adding a backend is adding a line here. Nothing is
imported until an op first runs on that backend: triton (optional) and the native extension stay unloaded at import.
projected_linear_gradient has no kernel yet: its backends are plain PyTorch and run on every device.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch

from . import _backend

_NATIVE = "unlearn_fast._C"
_TRITON = "unlearn_fast.triton_kernels"

IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "gaussian_noise": {
        "reference": "unlearn_fast.ops.noise_reference:gaussian_noise_reference",
        "cpp": f"{_NATIVE}:gaussian_noise",
        "cuda": f"{_NATIVE}:gaussian_noise",
        "triton": f"{_TRITON}.noise:gaussian_noise_triton",
    },
    "noisy_input": {
        "reference": "unlearn_fast.ops.noisy_input_reference:noisy_input_reference",
        "cpp": f"{_NATIVE}:noisy_input",
        "cuda": f"{_NATIVE}:noisy_input",
        "triton": f"{_TRITON}.noisy_input:noisy_input_triton",
    },
    "denoising_loss": {
        "reference": "unlearn_fast.ops.denoising_loss_reference:denoising_loss_reference",
        "cpp": f"{_NATIVE}:denoising_loss",
        "cuda": f"{_NATIVE}:denoising_loss",
        "triton": f"{_TRITON}.denoising_loss:denoising_loss_triton",
    },
    "linear_fisher_diag": {
        "reference": "unlearn_fast.ops.linear_fisher_reference:linear_fisher_reference",
        "cpp": f"{_NATIVE}:linear_fisher_diag",
        "cuda": f"{_NATIVE}:linear_fisher_diag",
        "triton": f"{_TRITON}.linear_fisher:linear_fisher_triton",
    },
    "projected_linear_gradient": {
        "blocked": "unlearn_fast.ops.projected_linear_gradient_blocked:projected_linear_gradient_blocked",
        "reference": "unlearn_fast.ops.projected_linear_gradient_reference:projected_linear_gradient_reference",
    },
}

# Ops without a kernel backend, and the backend "auto" means for them (on every device).
PLAIN_PYTORCH_AUTO = {"projected_linear_gradient": "blocked"}


def backends(op: str) -> tuple[str, ...]:
    """The backend names `op` accepts, "auto" first."""
    return ("auto", *IMPLEMENTATIONS[op]) if op in PLAIN_PYTORCH_AUTO else _backend.BACKENDS


@functools.cache
def implementation(op: str, backend: str) -> Callable:
    """The function registered for `op` on the concrete `backend`, imported on first use."""
    module, _, name = IMPLEMENTATIONS[op][backend].partition(":")
    return getattr(importlib.import_module(module), name)


def select(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend that runs `op` on `device` (recorded for last_backend), or the error saying why none."""
    if op not in PLAIN_PYTORCH_AUTO:
        return _backend.resolve(op, backend, device)
    if backend not in backends(op):
        raise ValueError(f"{op}: backend must be one of {backends(op)}, got {backend!r}")
    chosen = PLAIN_PYTORCH_AUTO[op] if backend == "auto" else backend
    _backend.record(op, chosen, device)
    return chosen


def run(op: str, backend: str, device: torch.device, *args):
    """`op` on the backend select() picks, called with `args`."""
    return implementation(op, select(op, backend, device))(*args)
