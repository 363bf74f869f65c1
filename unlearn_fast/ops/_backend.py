"""Backend selection for the fused ops: the native extension (C++/OpenMP, CUDA), Triton, or the PyTorch reference.

registry.py says which function each backend runs; this module says which backend can run here.

backend="auto" picks, for CUDA tensors: the CUDA extension if built, else Triton if importable, else the reference;
for CPU tensors: the C++ extension if built, else the reference. Triton runs on CPU tensors only when asked for
explicitly with TRITON_INTERPRET=1 set (the interpreter is for tests, not speed). Asking explicitly for a backend
that cannot run raises BackendUnavailableError saying why.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import warnings

import torch

BACKENDS = ("auto", "cpp", "cuda", "triton", "reference")

_log = logging.getLogger("unlearn_fast.ops")
_NOT_LOADED = object()
_extension = _NOT_LOADED
_last_backend: dict[str, str] = {}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the op here."""


def _import_extension():
    return importlib.import_module("unlearn_fast._C")


def native():
    """The compiled extension unlearn_fast._C, or None (with a one-time notice) when it is not built."""
    global _extension
    if _extension is _NOT_LOADED:
        try:
            _extension = _import_extension()
        except ImportError as exc:
            _extension = None
            warnings.warn(f"unlearn_fast: native extension unavailable ({exc}); using the PyTorch reference ops")
    return _extension


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, else a short reason."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got {device}"
        return None if native() is not None else "unlearn_fast._C is not built"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got {device}"
        if native() is None:
            return "unlearn_fast._C is not built"
        return None if native().has_cuda() else "unlearn_fast._C was built without CUDA"
    if backend == "triton":
        if not _triton_importable():
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            return None if os.environ.get("TRITON_INTERPRET") == "1" else "triton on CPU tensors needs TRITON_INTERPRET=1"
        return f"triton does not run on {device}"
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend that runs `op` on `device`, recorded for last_backend(op)."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        candidates = ("cuda", "triton") if device.type == "cuda" else ("cpp",) if device.type == "cpu" else ()
        chosen = next((b for b in candidates if _unavailable_reason(b, device) is None), "reference")
    else:
        reason = _unavailable_reason(backend, device)
        if reason is not None:
            raise BackendUnavailableError(f"{op}: backend {backend!r} is unavailable: {reason}")
        chosen = backend
    record(op, chosen, device)
    return chosen


def record(op: str, chosen: str, device: torch.device) -> None:
    """Note that `op` runs on `chosen`, for last_backend(op)."""
    _last_backend[op] = chosen
    _log.debug("%s: %s backend on %s", op, chosen, device)


def last_backend(op: str) -> str | None:
    """The backend the last call of `op` (e.g. "gaussian_noise") ran on in this process; None before the first call."""
    return _last_backend.get(op)


def available_backends(device: str | torch.device | None = None) -> tuple[str, ...]:
    """Backends that can run on `device`; with no device, on any device of this machine (CPU, and CUDA if present)."""
    if device is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(device)]
    return tuple(b for b in BACKENDS[1:] if any(_unavailable_reason(b, d) is None for d in devices))
