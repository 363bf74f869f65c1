"""How the scoring pass calls the UNet: precision, memory format and torch.compile, prepared once per UNet.

A compiled forward is kept on the UNet it was made for and reused for every later pass over it. Unlearned weights are
copied INTO that UNet for a pass (weight_swap.swapped_weights) instead of scoring a new copy: torch.compile guards
on tensor metadata, not values, so the pass after unlearning reuses the graph (tests/ops/test_unet_forward.py counts the
graphs; compiling the default UNet took 86 s on the 2-core CPU, so a recompile per query would show). With mode
"reduce-overhead" the compiled UNet replays as CUDA graphs; its output buffer is reused by the next call, which is safe
here because each output is reduced to losses before the next call.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from .forward_plan import ForwardPlan

class _ForwardCache(dict):
    """Prepared forwards kept on their UNet; a deep copy of the UNet (unlearn's working copy) starts with none."""

    def __deepcopy__(self, memo):
        return _ForwardCache()


@contextmanager
def precision(dtype: str, device: torch.device):
    """The UNet's arithmetic: "bf16" autocasts its matmuls and convolutions (noise, x_t and the loss reduction stay
    fp32); "fp32" means IEEE fp32 on a GPU too, with TF32 off for matmuls and cuDNN convolutions (torch leaves TF32 on
    for cuDNN by default, which rounds inputs to 10 mantissa bits: larger than many loss changes AbU measures)."""
    if dtype == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    matmul, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def unet_forward(model, unet: torch.nn.Module, plan: ForwardPlan, device: torch.device
                 ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x_t, t, cond) → the denoiser's prediction (model.predict through `unet`), as `plan` says. Converting to
    channels_last changes `unet` in place (its weights' strides, not their values); the compiled module is cached on
    `unet`."""
    channels_last = plan.uses_channels_last(device)
    cache = unet.__dict__.setdefault("_unlearn_fast_forwards", _ForwardCache())
    key = (plan.compile, channels_last)
    if key not in cache:
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        module = unet if plan.compile == "none" else torch.compile(unet, mode=None if plan.compile == "default"
                                                                    else plan.compile, dynamic=False)
        cache[key] = module

    module = cache[key]
    graphs = plan.compile == "reduce-overhead"

    def forward(x_t, t, cond):
        if channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if graphs:  # each call is a new step: the previous output (already reduced to losses) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return model.predict(x_t, t, cond, unet=module)
    return forward
