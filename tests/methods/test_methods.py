"""Baselines behind the common method interface, each against a plain reference computed here."""
import numpy as np
import pytest
import torch

from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.methods.abu.method import attribute_by_unlearning
from unlearn_fast.workspace import Workspace
from unlearn_fast.data import load_pixels
from unlearn_fast.data.dataset import SubsetDataset
from unlearn_fast.errors import SettingsError
from unlearn_fast.methods import AbU, GradientKernel, PixelCosine, RandomRanking, build_method, run_method
from unlearn_fast.methods.projector import SparseProjector
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.ops import gaussian_noise
from unlearn_fast.query import query_from_array
from unlearn_fast.engine.loss_grid import timestep_grid
from unlearn_fast.engine.unlearn import UnlearnSettings

N = 24


@pytest.fixture(scope="module")
def setting(default_dataset, tmp_path_factory):
    model = DiffusionModel.load("default")
    dataset = SubsetDataset(default_dataset, range(100, 100 + N))
    workspace = Workspace(model, dataset, tmp_path_factory.mktemp("methods"), progress=False).prepare()
    pixels = load_pixels(dataset, model.resolution)
    queries = [query_from_array(pixels[5], dataset.captions(5)[0], model.resolution),
               query_from_array(pixels[17], dataset.captions(17)[0], model.resolution)]
    return workspace, pixels, queries


def test_random_is_seeded_per_query(setting):
    workspace, _, queries = setting
    both = RandomRanking(seed=3).score(workspace, queries)
    assert both.shape == (2, N) and not np.allclose(both[0], both[1])
    np.testing.assert_array_equal(RandomRanking(seed=3).score(workspace, queries[1:])[0], both[1])
    assert not np.allclose(RandomRanking(seed=4).score(workspace, queries)[0], both[0])


def test_pixel_cosine_matches_reference_and_finds_the_copy(setting):
    workspace, pixels, queries = setting
    scores = PixelCosine(chunk=5).score(workspace, queries)  # chunks of 5: a partial last chunk too
    flat = pixels.reshape(N, -1).astype(np.float64) / 127.5 - 1
    for q, query in enumerate(queries):
        x = query.image.reshape(-1).astype(np.float64) / 127.5 - 1
        reference = flat @ x / (np.linalg.norm(flat, axis=1) * np.linalg.norm(x))
        np.testing.assert_allclose(scores[q], reference, rtol=1e-5, atol=1e-6)
    assert scores.argmax(1).tolist() == [5, 17]


def _reference_features(method, model, x0, cond, ids):
    """Per-example loop: autograd per (example, timestep), averaged, then the projection as a dense matrix."""
    params = model.parameter_group(method.group)
    projection = SparseProjector(params, method.dim, method.seed).buckets
    t = timestep_grid(model.scheduler.config.num_train_timesteps, method.timesteps)
    rows = []
    for i in range(len(x0)):
        noise = gaussian_noise(method.seed, int(ids[i]), torch.arange(len(t)), 0, x0.shape[1:])
        total = None
        for j in range(len(t)):
            with torch.enable_grad():
                x_t = model.scheduler.add_noise(x0[i:i + 1], noise[j:j + 1], t[j:j + 1])
                pred = model.unet(x_t, t[j:j + 1], encoder_hidden_states=cond[i:i + 1]).sample
                if method.output == "loss":
                    pred = pred - noise[j:j + 1]
                grads = torch.autograd.grad(pred.pow(2).sum(), list(params.values()))
            flat = torch.cat([g.flatten() for g in grads]).double() / len(t)
            total = flat if total is None else total + flat
        dense = torch.zeros(method.dim, total.numel(), dtype=torch.float64)
        bucket = torch.cat([projection[n][0] for n in params])
        sign = torch.cat([projection[n][1] for n in params]).double()
        dense[bucket, torch.arange(total.numel())] = sign
        rows.append(dense @ total)
    return torch.stack(rows)


@pytest.mark.parametrize("output", ["sqnorm", "loss"])
def test_gradient_kernel_features_match_a_per_example_loop(setting, output):
    workspace, _, _ = setting
    model = workspace.model
    for p in model.unet.parameters():
        p.requires_grad_(True)
    method = GradientKernel(output=output, timesteps=3, dim=64, group="attention", block=2)
    x0 = torch.from_numpy(np.array(workspace.latents[:3]))
    cond = torch.from_numpy(np.array(workspace.conditioning[:3]))
    ids = torch.tensor([0, 1, 2])
    fast = method.features(model, x0, cond, ids)
    reference = _reference_features(method, model, x0, cond, ids)
    for p in model.unet.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6 * reference.abs().max().item())


def test_gradient_kernel_scores_are_the_kernel_regression_formula(setting):
    workspace, _, queries = setting
    method = GradientKernel(timesteps=2, dim=32, group="kv", damping=0.05, block=7)
    scores = method.score(workspace, queries)
    phi = np.asarray(method.training_features(workspace), np.float64)
    model = workspace.model
    x0 = model.encode_images(np.stack([q.image for q in queries]))
    cond = model.encode_text([q.prompt for q in queries])
    ids = torch.tensor([int(q.key[:8], 16) for q in queries])
    phi_q = method.features(model, x0, cond, ids).numpy()
    gram = phi.T @ phi
    inverse = np.linalg.inv(gram + 0.05 * np.trace(gram) / 32 * np.eye(32))
    np.testing.assert_allclose(scores, phi_q @ inverse @ phi.T, rtol=1e-3, atol=1e-5 * np.abs(scores).max())
    # the block size changes memory, never a score; and a second call reads the cached features back
    assert GradientKernel(timesteps=2, dim=32, group="kv", damping=0.05, block=3).key == method.key
    np.testing.assert_allclose(GradientKernel(timesteps=2, dim=32, group="kv", damping=0.05, block=3)
                               .score(workspace, queries), scores, rtol=1e-6)


def test_run_method_caches_and_reports_like_abu(setting, tmp_path):
    workspace, _, queries = setting
    first = run_method(PixelCosine(), workspace, queries)
    assert first.scores.shape == (2, N) and first.records[0]["method"] == "pixel"
    paths = first.save(str(tmp_path / "report"))
    assert np.load(paths["scores"]).shape == (2, N)
    cached = run_method(PixelCosine(), workspace, queries[::-1])  # per query: order and subsets do not matter
    np.testing.assert_array_equal(cached.scores, first.scores[::-1])


def test_abu_through_run_method_is_attribution_by_unlearning_stored_once(setting):
    workspace, _, queries = setting
    abu = AbU(unlearn=UnlearnSettings(step=AlphaOverN(1e-4), draws=16))
    via_method = run_method(abu, workspace, queries[:1])
    direct = attribute_by_unlearning(workspace, queries[:1], abu.unlearn)
    np.testing.assert_array_equal(via_method.scores, direct.scores)
    assert via_method.records[0]["folder"].startswith("queries/")  # the query folder with the unlearned weights
    assert not (workspace.store.path / "methods" / abu.key).exists()  # no second copy of the scores


def test_build_method_names_the_problem():
    assert isinstance(build_method("abu", step="alpha/N:0.05"), AbU)
    assert build_method("abu", step="alpha/N:0.05").unlearn.step == AlphaOverN(0.05)
    assert build_method("trak").output == "loss" and build_method("dtrak").output == "sqnorm"
    with pytest.raises(SettingsError, match="unknown method 'clip'"):
        build_method("clip")
    with pytest.raises(SettingsError, match="needs an encoder"):
        build_method("feature")
    with pytest.raises(SettingsError, match="'pixel'"):
        build_method("pixel", bogus=1)
    with pytest.raises(SettingsError, match="output"):
        GradientKernel(output="logits")
