"""Unlearning a query (METHOD.md §4): Fisher-preconditioned gradient ASCENT on its loss, on a copy of the UNet.

    repeat `steps` times:  θ ← θ + s · ĝ / F,   ĝ = mean over `draws` (t, ε) of ∇θ L(ẑ, θ)

The step s follows a typed rule (engine/step_rules.py): a fixed size whatever N (the default), α/N (the paper), or the
step that raises the query's own loss by a factor (a short line search on fresh draws of the query alone, u = ĝ / F).

Two options of MUCS (machine unlearning for copyright, which forgets by ascent on the forgotten data while it keeps
the rest):
    cap        after each step, if the query's loss passed the loss of an untrained model (one that predicts 0: the
               mean of target² on the same draws), the step is shortened until it sits at that loss: the query is
               forgotten as far as a model that never learnt anything, no further
    retain R   each step ascends on the query while it descends on R training rows drawn per step (seeded by
               (seed, step)): u = (ĝ_query − ĝ_retained) / F, so what every image shares is not unlearnt

F is estimate_fisher's output, which already includes the damping λ. Draw d of step k is keyed by (seed, k, d):
timestep keyed_timesteps(seed, k, d), noise ops.gaussian_noise(seed, k, d, flip 0), so ĝ does not depend on
batch_size and a run is repeatable. The line search measures the loss on the draws d in [draws, draws + 128). The
retained rows r take draws keyed (seed, k, RETAIN_KEY + r) with flip 1, apart from every query draw.

A region (the query's mask at the latent resolution, of mean 1: Query.latent_weight) weights the query's per-element
loss in ĝ and in the losses the rise line search and the cap measure (the untrained model's loss is weighted alike);
the retained rows' loss and the training rows' scoring are unchanged.
"""
from __future__ import annotations

import copy

import torch

from .. import ops
from .batching import pad_rows
from .curvature import KroneckerCurvature
from ..errors import SettingsError
from .fisher import keyed_timesteps
from .fisher_hooks import summed_gradient
from .step_rules import AlphaOverN, LossRise, StepRule
from .unlearn_settings import UnlearnSettings

RISE_DRAWS = 128  # query draws the "rise" line search measures its loss on
RISE_TOLERANCE = 0.1  # accept a step whose rise is within 10 % of the target
RISE_EVALUATIONS = 8
CAP_BISECTIONS = 12  # halvings of the step's scale interval when the cap shortens a step
RETAIN_KEY = 1 << 20  # retained row r uses draw key RETAIN_KEY + r


def _query_draws(model, x0_query, cond_query, settings: UnlearnSettings, step: int, first: int, stop: int):
    """Batches of the query's draws d in [first, stop) of step `step`: (x0, cond, t, noise, real rows). Each batch is
    padded to batching.pad_rows (the padding's rows are dropped), so results do not depend on the batch size."""
    T = model.num_timesteps
    for start in range(first, stop, settings.batch_size):
        d = torch.arange(start, min(start + settings.batch_size, stop), device=x0_query.device)
        count, d = len(d), pad_rows(d)
        t = keyed_timesteps(settings.seed, step, d, T).to(x0_query.device)
        noise = ops.gaussian_noise(settings.seed, step, d, 0, x0_query.shape[1:], device=x0_query.device)
        yield x0_query.expand(len(d), -1, -1, -1), cond_query.expand(len(d), *cond_query.shape[1:]), t, noise, count


def query_gradient(model, unet, params: dict, x0_query, cond_query, settings: UnlearnSettings, step: int,
                   weight=None, on_draws=None):
    """ĝ in float64: the mean over the step's draws of ∇ L(ẑ), whatever the batch size (fisher_hooks.summed_gradient);
    weight: the region's per-element weight (None: the whole image); on_draws(count) after each batch of draws."""
    total = {name: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for name, p in params.items()}
    for x0, cond, t, noise, count in _query_draws(model, x0_query, cond_query, settings, step, 0, settings.draws):
        grads = summed_gradient(model, unet, params, x0, cond, t, noise, rows=count, scale=1.0 / settings.draws,
                                weight=weight)
        for name, g in grads.items():
            total[name] += g
        if on_draws is not None:
            on_draws(count)
    return total


def retained_gradient(model, unet, params: dict, x0, cond, settings: UnlearnSettings, step: int) -> dict:
    """The mean over the retained rows (x0 (R, C, h, w), cond (R, ...) conditioning rows) of ∇ L, one keyed draw per row, float64."""
    T = model.num_timesteps
    total = {name: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for name, p in params.items()}
    for start in range(0, len(x0), settings.batch_size):
        r = torch.arange(start, min(start + settings.batch_size, len(x0)), device=x0.device)
        count, r = len(r), pad_rows(r)
        d = RETAIN_KEY + r
        t = keyed_timesteps(settings.seed, step, d, T).to(x0.device)
        noise = ops.gaussian_noise(settings.seed, step, d, 1, x0.shape[1:], device=x0.device)
        grads = summed_gradient(model, unet, params, x0[r], cond[r], t, noise, rows=count, scale=1.0 / len(x0))
        for name, g in grads.items():
            total[name] += g
    return total


@torch.no_grad()
def _mean_over_measure_draws(model, x0_query, cond_query, settings: UnlearnSettings, step: int, per_row) -> float:
    """The mean of per_row(x0, cond, t, noise) (one float per row) over the RISE_DRAWS draws after the gradient's own
    (fresh noise, the same at every evaluation), float64."""
    total = 0.0
    for x0, cond, t, noise, count in _query_draws(model, x0_query, cond_query, settings, step, settings.draws,
                                                  settings.draws + RISE_DRAWS):
        total += float(per_row(x0, cond, t, noise)[:count].double().sum())
    return total / RISE_DRAWS


def query_loss(model, unet, x0_query, cond_query, settings: UnlearnSettings, step: int, weight=None) -> float:
    """L(ẑ) (in the region, when weighted) on the measuring draws (those the rise line search and the cap use)."""
    return _mean_over_measure_draws(model, x0_query, cond_query, settings, step,
                                    lambda x0, cond, t, noise: model.loss(x0, cond, t, noise, unet=unet,
                                                                          weight=weight))


def untrained_loss(model, x0_query, cond_query, settings: UnlearnSettings, step: int, weight=None) -> float:
    """The loss an untrained model (predicting 0) has on the same draws: the mean of target² (weighted alike)."""
    def per_row(x0, cond, t, noise):
        squared = model.target(x0, noise, t).double().pow(2)
        return (squared if weight is None else squared * weight.double()).flatten(1).mean(1)
    return _mean_over_measure_draws(model, x0_query, cond_query, settings, step, per_row)


def _set_step(params: dict, start: dict, update: dict, scale: float, step: int, rule: StepRule) -> None:
    with torch.no_grad():
        for name, p in params.items():
            new = (start[name] + scale * update[name]).to(p.dtype)
            if not torch.isfinite(new).all():
                raise FloatingPointError(f"unlearning produced NaN/inf in {name} at step {step}: try a smaller "
                                         f"step (now --step {rule})")
            p.copy_(new)


def _rise_scale(model, unet, params, start, update, gradient, x0_query, cond_query, settings, step, record,
                weight=None) -> float:
    """The step s along `update` that raises the query's loss by the rule's factor f (within RISE_TOLERANCE): start
    from the first-order guess s = f·L / (ĝ·u), then rescale by the ratio of target to achieved rise (a secant step in log s)."""
    before = query_loss(model, unet, x0_query, cond_query, settings, step, weight)
    slope = sum(float((gradient[n] * update[n]).sum()) for n in params)
    if not slope > 0:
        raise FloatingPointError(f"step {step}: the query's gradient gives no ascent direction (ĝ·u = {slope:g})")
    target = settings.step.factor * before
    scale, rise = target / slope, 0.0
    for _ in range(RISE_EVALUATIONS):
        _set_step(params, start, update, scale, step, settings.step)
        rise = query_loss(model, unet, x0_query, cond_query, settings, step, weight) - before
        if abs(rise - target) <= RISE_TOLERANCE * target:
            break
        scale *= min(4.0, max(0.25, target / rise)) if rise > 0 else 4.0
    else:
        _set_step(params, start, update, scale, step, settings.step)
        rise = query_loss(model, unet, x0_query, cond_query, settings, step, weight) - before
    if record is not None:
        record.setdefault("steps", []).append({"scale": scale, "loss_before": before, "rise": rise / before})
    return scale


def _capped_scale(model, unet, params, start, update, scale, x0_query, cond_query, settings, step, record,
                  weight=None) -> float:
    """`scale`, or the shorter scale at which the query's loss equals an untrained model's (bisection on the scale)."""
    cap = untrained_loss(model, x0_query, cond_query, settings, step, weight)
    after = query_loss(model, unet, x0_query, cond_query, settings, step, weight)
    if after > cap:
        low, high = 0.0, scale
        for _ in range(CAP_BISECTIONS):
            middle = (low + high) / 2
            _set_step(params, start, update, middle, step, settings.step)
            low, high = (middle, high) if query_loss(model, unet, x0_query, cond_query, settings, step, weight) <= cap \
                else (low, middle)
        scale = low
        _set_step(params, start, update, scale, step, settings.step)
    if record is not None and record.get("steps"):
        record["steps"][-1].update(cap=cap, capped=after > cap, scale=scale)
    return scale


def unlearn(model, fisher, x0_query: torch.Tensor, cond_query: torch.Tensor,
            settings: UnlearnSettings = UnlearnSettings(), num_train: int | None = None,
            record: dict | None = None, retained=None, weight: torch.Tensor | None = None,
            on_draws=None) -> torch.nn.Module:
    """An unlearned deep copy of model.unet (model itself is untouched); x0_query (1, C, h, w), cond_query its one
    conditioning row, (1, L, D) or packed (1, F) (models.conditioning).
    fisher: the diagonal F + λ ({name: tensor}) or a curvature.KroneckerCurvature. record: filled with each step's
    scale (and, for the "rise" rule, the query's loss and its achieved rise; with the cap, where it cut the step).
    retained: step -> (x0, cond) of that step's settings.retain training rows (needed when retain > 0).
    weight: the query's region, a per-element weight of mean 1 broadcast over x0_query's shape (e.g. (1, 1, h, w)).
    on_draws(count): called after each batch of the query's draws (a progress bar over steps × draws)."""

    N = settings.num_train or num_train
    if isinstance(settings.step, AlphaOverN) and not N:
        raise ValueError("unlearn needs the training-set size N (num_train argument or settings.num_train)")
    if x0_query.ndim != 4 or len(x0_query) != 1 or cond_query.ndim < 2 or len(cond_query) != 1:
        raise ValueError(f"unlearn takes one query: x0 (1, C, h, w) and one conditioning row (1, ...), got "
                         f"{tuple(x0_query.shape)} and {tuple(cond_query.shape)}")
    unet = copy.deepcopy(model.unet)
    copies = dict(unet.named_parameters())
    params = {name: copies[name] for name in model.parameter_group(settings.group)}
    kronecker = isinstance(fisher, KroneckerCurvature)
    if settings.precondition and kronecker:
        fisher.check(params)  # every layer's factors, of its shapes, before the first gradient
    elif settings.precondition:
        missing = [n for n, p in params.items() if n not in fisher or fisher[n].shape != p.shape]
        if missing:
            raise SettingsError(f"the Fisher lacks (or has another shape for) {len(missing)} parameters of group "
                             f"{settings.group!r}, e.g. {missing[0]}: estimate it over the same group")
    if settings.retain and retained is None:
        raise ValueError("unlearn with retain > 0 needs the retained rows (the retained argument)")
    for step in range(settings.steps):
        g = query_gradient(model, unet, params, x0_query, cond_query, settings, step, weight, on_draws)
        ascent = g
        if settings.retain:
            kept = retained_gradient(model, unet, params, *retained(step), settings, step)
            g = {name: g[name] - kept[name] for name in g}
        if settings.precondition and kronecker:
            update = fisher.precondition(g)
        else:
            update = {name: g[name] / fisher[name].to(p.device, torch.float64) if settings.precondition else g[name]
                      for name, p in params.items()}
        start = {name: p.detach().double().clone() for name, p in params.items()}
        if isinstance(settings.step, LossRise):
            scale = _rise_scale(model, unet, params, start, update, ascent, x0_query, cond_query, settings, step,
                                record, weight)
        else:
            scale = settings.step.scale(N)
            _set_step(params, start, update, scale, step, settings.step)
            if record is not None:
                record.setdefault("steps", []).append({"scale": scale})
        if settings.cap:
            _capped_scale(model, unet, params, start, update, scale, x0_query, cond_query, settings, step, record,
                          weight)
    return unet
