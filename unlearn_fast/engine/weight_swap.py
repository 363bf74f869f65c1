"""Scoring unlearned weights with the original UNet: copy them in for one pass, put the originals back after.

Unlearning changes a small group (the cross-attention K/V: 45 k of 1.5 M weights in the default model, 7 M of 57 M
in the MSCOCO UNet), so swapping them costs nothing beside a pass, keeps one UNet in (GPU) memory instead of two, and
lets a compiled UNet (unet_forward) score before and after unlearning with one graph.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def swapped_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """Inside the block, module's parameters named in `weights` hold those values (copied in place, so their
    tensors, strides and any compiled graph stay); on exit, even by an exception, the originals are restored."""
    params = dict(module.named_parameters())
    unknown = [name for name in weights if name not in params]
    if unknown:
        raise KeyError(f"swapped_weights: {len(unknown)} names are not parameters of the module, e.g. {unknown[0]!r}")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(f"swapped_weights: {name} has shape {tuple(params[name].shape)}, the new value "
                             f"{tuple(value.shape)}")
    saved = {name: params[name].detach().clone() for name in weights}
    try:
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        yield module
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
