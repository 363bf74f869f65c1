import dataclasses

import pytest
import torch

from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast import ops
from unlearn_fast.engine.fisher import FisherSettings, estimate_fisher, keyed_timesteps, load_fisher, save_fisher
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.scoring import per_example_losses
from unlearn_fast.engine.unlearn import UnlearnSettings, unlearn


@pytest.fixture(scope="module")
def setup(small_pixels):
    """The shipped (trained) default model, 6 training rows and one query."""
    from unlearn_fast.models.adapter import DiffusionModel

    model = DiffusionModel.load("default").eval()
    pixels, captions = small_pixels
    x0 = model.encode_images(pixels[:7])
    cond = model.encode_text([c[0] for c in captions[:7]])
    return model, x0[:6], cond[:6], torch.tensor([3, 10, 11, 40, 41, 95]), x0[6:], cond[6:]


def rel(a, b):
    """Relative error in norm."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_fisher_is_mean_of_single_example_squared_gradients(setup):
    model, x0, cond, ids, _, _ = setup
    params = model.parameter_group("kv")
    settings = FisherSettings(samples_per_example=2, batch_size=5, seed=3, damping=0.0)
    fisher = estimate_fisher(model, params, x0, cond, ids, settings)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(6):
        for s in range(2):
            t = keyed_timesteps(3, ids[i:i + 1], s, 1000)
            noise = ops.gaussian_noise(3, ids[i:i + 1], s, 0, x0.shape[1:])
            grads = torch.autograd.grad(model.loss(x0[i:i + 1], cond[i:i + 1], t, noise)[0], list(params.values()))
            for n, g in zip(params, grads):
                expected[n] += g.square() / 12
    for n in params:
        assert fisher[n].dtype == torch.float32 and rel(fisher[n], expected[n]) < 1e-4, n
    assert len(set(keyed_timesteps(3, ids, 0, 1000).tolist())) > 1  # each example has its own timestep


def test_fisher_independent_of_batch_size_and_order(setup, tmp_path):
    model, x0, cond, ids, _, _ = setup
    params = model.parameter_group("kv")
    settings = FisherSettings(samples_per_example=2, seed=1, damping=1e-6)
    runs = [estimate_fisher(model, params, x0, cond, ids, dataclasses.replace(settings, batch_size=b))
            for b in (1, 4, 64)]
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    runs.append(estimate_fisher(model, params, x0[perm], cond[perm], ids[perm], settings))
    for run in runs[1:]:  # batches are whole 16-row blocks summed in float64: only the permutation reorders sums
        for n in params:
            assert rel(run[n], runs[0][n]) < 1e-6, n
    other_seed = estimate_fisher(model, params, x0, cond, ids, dataclasses.replace(settings, seed=2))
    assert max(rel(other_seed[n], runs[0][n]) for n in params) > 1e-3
    damped = estimate_fisher(model, params, x0, cond, ids, dataclasses.replace(settings, damping=0.5))
    assert all(torch.allclose(damped[n] - runs[0][n], torch.full_like(damped[n], 0.5 - 1e-6)) for n in params)

    save_fisher(tmp_path / "f.safetensors", runs[0], settings, {"model": "abc"})
    loaded, loaded_settings, meta = load_fisher(tmp_path / "f.safetensors")
    assert loaded_settings == settings and meta == {"model": "abc"}
    assert all(torch.equal(loaded[n], runs[0][n]) for n in params)


@pytest.fixture(scope="module")
def fisher(setup):
    model, x0, cond, ids, _, _ = setup
    return estimate_fisher(model, model.parameter_group("kv"), x0, cond, ids, FisherSettings(samples_per_example=4))


def manual_update(model, fisher, xq, cq, settings, N):
    """(α/N)·ĝ/F (or (α/N)·ĝ), ĝ from one autograd call over all the step-0 draws."""
    params = model.parameter_group(settings.group)
    d = torch.arange(settings.draws)
    t = keyed_timesteps(settings.seed, 0, d, 1000)
    noise = ops.gaussian_noise(settings.seed, 0, d, 0, xq.shape[1:])
    loss = model.loss(xq.expand(len(d), -1, -1, -1), cq.expand(len(d), -1, -1), t, noise).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    return {n: settings.step.scale(N) * g.double() / (fisher[n].double() if settings.precondition else 1.0)
            for n, g in zip(params, grads)}


def deltas(model, unet):
    new = dict(unet.named_parameters())
    return {n: new[n].detach().double() - p.detach().double() for n, p in model.unet.named_parameters()}


def test_unlearn_update_is_the_preconditioned_ascent_step(setup, fisher):
    model, _, _, _, xq, cq = setup
    before = {n: p.detach().clone() for n, p in model.unet.state_dict().items()}
    settings = UnlearnSettings(step=AlphaOverN(0.01), draws=20, batch_size=7)
    unet = unlearn(model, fisher, xq, cq, settings, num_train=6)
    assert all(torch.equal(p, before[n]) for n, p in model.unet.state_dict().items())  # the original is untouched
    change, kv = deltas(model, unet), model.parameter_group("kv")
    assert {n for n, d in change.items() if d.abs().max() > 0} == set(kv)
    expected = manual_update(model, fisher, xq, cq, settings, 6)
    for n in kv:
        assert rel(change[n], expected[n]) < 1e-4, n

    again = deltas(model, unlearn(model, fisher, xq, cq, settings, num_train=6))
    batched = deltas(model, unlearn(model, fisher, xq, cq, dataclasses.replace(settings, batch_size=64), 6))
    for n in kv:
        assert torch.equal(again[n], change[n])
        assert rel(batched[n], change[n]) < 1e-9, n  # ĝ is reduced in float64 from per-draw rows


def test_unlearning_raises_the_query_loss(setup, fisher):
    model, _, _, _, xq, cq = setup
    grid = LossGrid(timesteps=10, flips=False)
    unet = unlearn(model, fisher, xq, cq, UnlearnSettings(step=AlphaOverN(0.05), draws=64, steps=2), num_train=6)
    before = per_example_losses(model, xq, cq, [0], grid).mean()
    after = per_example_losses(model, xq, cq, [0], grid, unet=unet).mean()
    assert after > before * 1.01


def test_sgd_baseline_and_settings_override_of_n(setup, fisher):
    model, _, _, _, xq, cq = setup
    # A large α: the SGD step is ~1e4 times smaller than the Fisher-preconditioned one, below float32 resolution.
    settings = UnlearnSettings(step=AlphaOverN(1000.0), draws=16, precondition=False, num_train=2)
    change = deltas(model, unlearn(model, fisher, xq, cq, settings, num_train=6))
    expected = manual_update(model, fisher, xq, cq, settings, 2)
    for n in expected:
        assert rel(change[n], expected[n]) < 1e-5, n


def test_overflow_raises_a_clear_error(setup):
    model, _, _, _, xq, cq = setup
    zeros = {n: torch.zeros_like(p) for n, p in model.parameter_group("kv").items()}
    with pytest.raises(FloatingPointError, match=r"NaN/inf in .*attn2\.to_[kv]\.weight at step 0.*smaller step \(now --step alpha/N:0.02\)"):
        unlearn(model, zeros, xq, cq, UnlearnSettings(step=AlphaOverN(0.02), draws=4), num_train=6)
    with pytest.raises(ValueError, match="training-set size"):
        unlearn(model, zeros, xq, cq, UnlearnSettings(step=AlphaOverN(), draws=4))
