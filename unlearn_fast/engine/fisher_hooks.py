"""Diagonal Fisher of a DiffusionModel's selected parameters, without per-example gradients for Linear layers.

Convention: diagonal_fisher returns, for each parameter θ, sum over the batch of (∂L_n/∂θ)², where L_n =
model.loss(x0, cond, timesteps, noise)[n] is example n's OWN loss (a mean over its elements). It is a SUM: METHOD.md
§2's F is the mean over the training set, so add the batches up and divide by the number of examples.

nn.Linear weights and biases (the K/V default) go through hooks: a forward hook keeps the layer's input x and output y,
one backward gives g = ∂(Σ_n L_n)/∂y, whose row n is ∂L_n/∂y_n because examples do not interact in the model (eval
mode: no batch statistics), and ops.linear_fisher_diag adds Σ_n (g_nᵀ x_n)² tile by tile. Any other parameter
falls back to torch.func per-example gradients (vmap of grad of a functional call), for those parameters only.

The same hooks give summed_gradient (unlearning's ĝ): each Linear's weight gradient Σ_n g_nᵀx_n is reduced in float64
from the captured rows, so it does not depend on how the draws are split into batches (a float32 backward sums each
batch in its own order, and ĝ, a mean of gradients of both signs, cancels enough to make that visible in τ).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..ops import linear_fisher_diag


def split_linear(unet, params: dict) -> tuple[dict, dict]:
    """(nn.Linear weights and biases: the hooked path, every other parameter: the fallback)."""
    def is_linear(name):
        path, _, attr = name.rpartition(".")
        return attr in ("weight", "bias") and isinstance(unet.get_submodule(path), nn.Linear)
    linear = {n: p for n, p in params.items() if is_linear(n)}
    return linear, {n: p for n, p in params.items() if n not in linear}


@contextmanager
def only_these_require_grad(unet, params):
    """Only `params` require grad inside (so the graph holds no other parameter's work); restored on exit."""
    flags, selected = [(p, p.requires_grad) for p in unet.parameters()], {id(p) for p in params.values()}
    try:
        for p in unet.parameters():
            p.requires_grad_(id(p) in selected)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def capture_linear_io(unet, paths, batch: int):
    """{path: (input x detached, output y)} of each Linear in `paths`, filled by one forward of `batch` rows."""
    captured = {}

    def forward_hook(path):
        def hook(module, inputs, output):
            if path in captured:  # a second call would add a second g_nᵀx_n to the same per-example gradient
                raise RuntimeError(f"{path} runs more than once per forward; use the vmap path")
            if inputs[0].shape[0] != batch:
                raise RuntimeError(f"{path} sees {inputs[0].shape[0]} rows for a batch of {batch}")
            captured[path] = inputs[0].detach(), output
        return hook

    handles = [unet.get_submodule(path).register_forward_hook(forward_hook(path)) for path in paths]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def linear_rows(captured, grads, batch: int, rows: int):
    """Per layer: (path, x, g) as (rows, tokens, features), the padding rows dropped, in a common dtype."""
    for (path, (x, _)), g in zip(captured.items(), grads):
        xs, gs = x.reshape(batch, -1, x.shape[-1])[:rows], g.reshape(batch, -1, g.shape[-1])[:rows]
        if xs.dtype != gs.dtype:  # autocast: bf16 outputs of float32 inputs
            xs, gs = xs.float(), gs.float()
        yield path, xs, gs


def diagonal_fisher(model, params: dict[str, nn.Parameter], x0, cond, timesteps, noise, *, backend: str = "auto",
                    rows: int | None = None, block_rows: int | None = None) -> dict[str, torch.Tensor]:
    """{name: float32 Σ_n (∂L_n/∂θ)²} for the UNet parameters `params` (e.g. model.parameter_group("kv")).

    rows: only the first `rows` examples are summed (the rest are batching.pad_rows padding); default all.
    block_rows: sum float32 partial sums of this many examples in float64 (and return float64), so that a caller
    whose batches are whole blocks gets the same bits for any batch size.
    """
    rows = len(x0) if rows is None else rows
    linear, other = split_linear(model.unet, params)
    fisher = _hooked_fisher(model, linear, x0, cond, timesteps, noise, backend, rows, block_rows) if linear else {}
    if other:
        fisher.update(_vmap_fisher(model, other, x0, cond, timesteps, noise, rows, block_rows))
    return {name: fisher[name] for name in params}


def _block_sums(rows: int, block_rows: int | None, square_sum):
    """square_sum(slice of examples) over consecutive blocks, the block results added in float64."""
    if block_rows is None:
        return square_sum(slice(0, rows))
    parts = [square_sum(slice(start, start + block_rows)) for start in range(0, rows, block_rows)]

    def add(values):  # one tensor per block, or None for an absent bias
        return None if values[0] is None else sum(value.double() for value in values)
    return tuple(add(v) for v in zip(*parts)) if isinstance(parts[0], tuple) else add(parts)


def _hooked_fisher(model, params, x0, cond, timesteps, noise, backend, rows, block_rows=None):
    unet, batch = model.unet, x0.shape[0]
    paths = {name.rpartition(".")[0] for name in params}
    with capture_linear_io(unet, paths, batch) as captured, only_these_require_grad(unet, params), \
            torch.enable_grad():  # callers may run under no_grad
        loss = model.loss(x0, cond, timesteps, noise).sum()
    # Differentiate w.r.t. the layer outputs, not the weights: the batch-summed weight gradients are never needed.
    grads = torch.autograd.grad(loss, [output for _, output in captured.values()])
    fisher = {}
    for path, xs, gs in linear_rows(captured, grads, batch, rows):
        with_bias = f"{path}.bias" in params
        fisher[f"{path}.weight"], fisher[f"{path}.bias"] = _block_sums(
            rows, block_rows, lambda b: linear_fisher_diag(xs[b], gs[b], bias=with_bias, backend=backend))
    return {name: fisher[name] for name in params}


def _vmap_fisher(model, params, x0, cond, timesteps, noise, rows=None, block_rows=None):
    def loss_one(selected, x, c, t, e):
        def unet(*args, **kwargs):
            return functional_call(model.unet, selected, args, kwargs)  # the other parameters are the module's own
        return model.loss(x[None], c[None], t[None], e[None], unet=unet)[0]

    with torch.no_grad():  # torch.func.grad differentiates anyway; no_grad keeps autograd off the other parameters
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0))({n: p.detach() for n, p in params.items()}, x0,
                                                                 cond, timesteps, noise)
    rows = len(x0) if rows is None else rows
    return {name: _block_sums(rows, block_rows, lambda b: g[b].float().square().sum(0)) for name, g in grads.items()}


def summed_gradient(model, unet, params: dict[str, nn.Parameter], x0, cond, timesteps, noise, *, rows: int,
                    scale: float = 1.0, weight=None) -> dict[str, torch.Tensor]:
    """{name: float64 ∂(scale · Σ_{n < rows} L_n)/∂θ} for `params` of `unet` (a UNet with model's architecture);
    weight: model.loss's per-element weight (a query's region).

    Linear weights and biases: reduced in float64 from the hooked rows (batch-split invariant). Other parameters: the
    float32 autograd gradient, cast.
    """
    batch = x0.shape[0]
    linear, other = split_linear(unet, params)
    paths = sorted({name.rpartition(".")[0] for name in linear})
    with capture_linear_io(unet, paths, batch) as captured, only_these_require_grad(unet, params), \
            torch.enable_grad():
        loss = model.loss(x0, cond, timesteps, noise, unet=unet, weight=weight)[:rows].sum() * scale
        outputs = [output for _, output in captured.values()]
        # Inside: a frozen model (e.g. one holding a LoRA) gets its parameters' requires_grad back on exit.
        grads = torch.autograd.grad(loss, outputs + list(other.values()))
    total = {name: g.double() for name, g in zip(other, grads[len(outputs):])}
    for path, xs, gs in linear_rows(captured, grads[:len(outputs)], batch, rows):
        gs64 = gs.double()
        total[f"{path}.weight"] = torch.einsum("ntj,nti->ji", gs64, xs.double())
        total[f"{path}.bias"] = gs64.sum((0, 1))
    return {name: total[name] for name in params}
