"""Where the model runs: one rule for every command ("auto" = the first CUDA GPU when torch sees one, else the CPU).

Data stays where it is read (numpy memmaps, CPU tensors); each pass moves one batch at a time to the model's device
and brings only its results back, so a training set larger than GPU memory is scored a chunk at a time.
"""
from __future__ import annotations

import torch

from ..errors import SettingsError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """"auto" / None → cuda if available else cpu; "cpu", "cuda", "cuda:1"… checked against what torch can use."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise SettingsError(f"device {spec!r} is not a torch device ({error}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {spec!r}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingsError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise SettingsError(f"device {spec!r}: only cpu and cuda devices are supported")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (a UNet lives on one device)."""
    return next(module.parameters()).device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """tensor on `device`; a CPU → GPU copy does not block the host (the next kernel waits for it on the stream)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
