"""Diagonal Fisher of a DiffusionModel's selected parameters, without per-example gradients for Linear layers.

Convention: diagonal_fisher returns, for each parameter θ, sum over the batch of (∂L_n/∂θ)², where L_n =
model.loss(x0, cond, timesteps, noise)[n] is example n's OWN loss (a mean over its elements). It is a SUM: METHOD.md
§2's F is the mean over the training set, so add the batches up and divide by the number of examples.

nn.Linear weights and biases (the K/V default) go through hooks: a forward hook keeps the layer's input x and output y,
one backward gives g = ∂(Σ_n L_n)/∂y, whose row n is ∂L_n/∂y_n because examples do not interact in the model (eval
mode: no batch statistics), and ops.linear_fisher_diag adds Σ_n (g_nᵀ x_n)² tile by tile. Any other parameter
falls back to torch.func per-example gradients (vmap of grad of a functional call), for those parameters only.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .ops import linear_fisher_diag


def diagonal_fisher(model, params: dict[str, nn.Parameter], x0, cond, timesteps, noise, *, backend: str = "auto"
                    ) -> dict[str, torch.Tensor]:
    """{name: float32 Σ_n (∂L_n/∂θ)²} for the UNet parameters `params` (e.g. model.parameter_group("kv"))."""
    def is_linear(name):
        path, _, attr = name.rpartition(".")
        return attr in ("weight", "bias") and isinstance(model.unet.get_submodule(path), nn.Linear)

    linear = {n: p for n, p in params.items() if is_linear(n)}
    other = {n: p for n, p in params.items() if n not in linear}
    fisher = _hooked_fisher(model, linear, x0, cond, timesteps, noise, backend) if linear else {}
    if other:
        fisher.update(_vmap_fisher(model, other, x0, cond, timesteps, noise))
    return {name: fisher[name] for name in params}


def _hooked_fisher(model, params, x0, cond, timesteps, noise, backend):
    unet, batch, captured = model.unet, x0.shape[0], {}

    def forward_hook(path):
        def hook(module, inputs, output):
            if path in captured:  # a second call would add a second g_nᵀx_n to the same per-example gradient
                raise RuntimeError(f"diagonal_fisher: {path} runs more than once per forward; use the vmap path")
            if inputs[0].shape[0] != batch:
                raise RuntimeError(f"diagonal_fisher: {path} sees {inputs[0].shape[0]} rows for a batch of {batch}")
            captured[path] = inputs[0].detach(), output
        return hook

    requires_grad, selected = [(p, p.requires_grad) for p in unet.parameters()], {id(p) for p in params.values()}
    handles = [unet.get_submodule(path).register_forward_hook(forward_hook(path))
               for path in {name.rpartition(".")[0] for name in params}]
    try:  # only the selected parameters require grad, so the graph holds no other parameter's work
        for p in unet.parameters():
            p.requires_grad_(id(p) in selected)
        with torch.enable_grad():  # callers may run under no_grad
            loss = model.loss(x0, cond, timesteps, noise).sum()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in requires_grad:
            p.requires_grad_(flag)
    # Differentiate w.r.t. the layer outputs, not the weights: the batch-summed weight gradients are never needed.
    grads = torch.autograd.grad(loss, [output for _, output in captured.values()])
    fisher = {}
    for (path, (x, _)), g in zip(captured.items(), grads):
        xs, gs = x.reshape(batch, -1, x.shape[-1]), g.reshape(batch, -1, g.shape[-1])
        if xs.dtype != gs.dtype:  # autocast: bf16 outputs of float32 inputs
            xs, gs = xs.float(), gs.float()
        fisher[f"{path}.weight"], fisher[f"{path}.bias"] = linear_fisher_diag(xs, gs, bias=f"{path}.bias" in params,
                                                                              backend=backend)
    return {name: fisher[name] for name in params}


def _vmap_fisher(model, params, x0, cond, timesteps, noise):
    def loss_one(selected, x, c, t, e):
        def unet(*args, **kwargs):
            return functional_call(model.unet, selected, args, kwargs)  # the other parameters are the module's own
        return model.loss(x[None], c[None], t[None], e[None], unet=unet)[0]

    with torch.no_grad():  # torch.func.grad differentiates anyway; no_grad keeps autograd off the other parameters
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0))({n: p.detach() for n, p in params.items()}, x0,
                                                                 cond, timesteps, noise)
    return {name: g.float().square().sum(0) for name, g in grads.items()}
