"""The two-stage AbU query: stage 1 (projected, preconditioned per-row gradients; methods/abu/linear.py) against an
explicit per-example gradient times a dense projection, stage 2 (exact AbU on candidates) against exact AbU, and the
projected Linear-gradient op against its reference."""
import dataclasses
import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unlearn_fast.engine.step_rules import FixedStep
from unlearn_fast import ops
from unlearn_fast.attributor import Attributor
from unlearn_fast.data.dataset import SubsetDataset
from unlearn_fast.data import load_pixels
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.errors import SettingsError
from unlearn_fast.methods import AttributionMethod, LinearisedAbU, TwoStageAbU, build_method
from unlearn_fast.methods.latent_similarity import LatentCosine
from unlearn_fast.methods.rank_union import RankUnion
from unlearn_fast.methods.abu.artefacts import fit_base_losses, fit_fisher
from unlearn_fast.methods.abu.method import attribute_by_unlearning
from unlearn_fast.methods.abu.two_stage import candidate_count, combine, resolve_candidates
from unlearn_fast.ranking import ranking
from unlearn_fast.methods.projector import SparseProjector
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.ops.noisy_input_reference import mirrored
from unlearn_fast.ops.projected_linear_gradient_reference import dense_projection
from unlearn_fast.query import query_from_array
from unlearn_fast.workspace import PrepareSettings, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
plg = importlib.import_module("unlearn_fast.ops.projected_linear_gradient_blocked")
two_stage_module = importlib.import_module("unlearn_fast.methods.abu.two_stage")

N = 24
SETTINGS = UnlearnSettings(steps=1, step=FixedStep(2e-5), draws=16)  # one small step: where stage 1 is exact


# ------------------------------------------------------------------------------------------------ the fused op
def _case(n, t, d_in, d_out, dim, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d_in, generator=generator).to(dtype)
    g = torch.randn(n, t, d_out, generator=generator).to(dtype)
    bucket = torch.randint(0, dim, (d_out * d_in,), generator=generator)
    sign = torch.randint(0, 2, (d_out * d_in,), generator=generator).float() * 2 - 1
    scale = torch.rand(d_out, d_in, generator=generator) + 0.5
    return x, g, bucket, sign, scale


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (3, 5, 7, 5, 11), (4, 9, 33, 17, 64)])
@pytest.mark.parametrize("scaled", [False, True])
def test_projected_linear_gradient_matches_the_reference(shape, scaled, monkeypatch):
    monkeypatch.setattr(plg, "SLAB_BYTES", 64)  # slabs of a few columns: the block loop and its last partial block
    x, g, bucket, sign, scale = _case(*shape)
    scale = scale if scaled else None
    dim = shape[-1]
    fast = ops.projected_linear_gradient(x, g, bucket, sign, dim, scale)
    reference = ops.projected_linear_gradient(x, g, bucket, sign, dim, scale, backend="reference")
    assert fast.dtype == torch.float64 and fast.shape == (shape[0], dim)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    # the reference itself, by hand for example 0: P · vec(s ⊙ g₀ᵀx₀)
    full = (g[0].double().T @ x[0].double()) * (1 if scale is None else scale.double())
    torch.testing.assert_close(reference[0], dense_projection(bucket, sign, dim) @ full.flatten())


def test_projected_linear_gradient_takes_strided_and_half_inputs():
    x, g, bucket, sign, scale = _case(3, 6, 10, 8, 16, seed=1)
    strided_x = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    wide = torch.zeros(*g.shape[:2], 2 * g.shape[2])
    wide[:, :, ::2] = g
    strided_g = wide[:, :, ::2]  # every other column of a wider tensor
    assert not strided_x.is_contiguous() and not strided_g.is_contiguous() and torch.equal(strided_g, g)
    expected = ops.projected_linear_gradient(x, g, bucket, sign, 16, scale, backend="reference")
    torch.testing.assert_close(ops.projected_linear_gradient(strided_x, strided_g, bucket, sign, 16, scale), expected,
                               rtol=1e-5, atol=1e-5)
    half = ops.projected_linear_gradient(x.bfloat16(), g.bfloat16(), bucket, sign, 16, scale)
    half_reference = ops.projected_linear_gradient(x.bfloat16(), g.bfloat16(), bucket, sign, 16, scale,
                                                   backend="reference")
    torch.testing.assert_close(half, half_reference, rtol=1e-4, atol=1e-4)


def test_projected_linear_gradient_names_bad_input():
    x, g, bucket, sign, scale = _case(2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match=r"x must be a float32.*got \(2, 3\)"):
        ops.projected_linear_gradient(x[:, :, 0], g, bucket, sign, 6)
    with pytest.raises(ValueError, match="share"):
        ops.projected_linear_gradient(x, g[:, :2], bucket, sign, 6)
    with pytest.raises(ValueError, match="d_out·d_in = 20"):
        ops.projected_linear_gradient(x, g, bucket[:-1], sign, 6)
    with pytest.raises(ValueError, match=r"scale must have shape \(5, 4\)"):
        ops.projected_linear_gradient(x, g, bucket, sign, 6, scale.T)
    with pytest.raises(ValueError, match="backend"):
        ops.projected_linear_gradient(x, g, bucket, sign, 6, backend="cuda")


# ------------------------------------------------------------------------------------------------- stage 1
@pytest.fixture(scope="module")
def setting(default_dataset, tmp_path_factory):
    model = DiffusionModel.load("default")
    dataset = SubsetDataset(default_dataset, range(300, 300 + N))
    settings = PrepareSettings(scoring=dataclasses.replace(PrepareSettings().scoring, timesteps=4, batch_size=40),
                               chunk_rows=10)  # 3 chunks, the last one partial
    workspace = Workspace(model, dataset, tmp_path_factory.mktemp("two_stage"), settings, progress=False)
    workspace.prepare([LinearisedAbU(SETTINGS)])  # the Fisher and base losses the stage-1 checks read
    pixels = load_pixels(dataset, model.resolution)
    queries = [query_from_array(pixels[k], dataset.captions(k)[0], model.resolution) for k in (4, 19)]
    return workspace, queries


def _explicit_feature(workspace, method, row, flips=(0, 1)):
    """ψ of caption row `row` by hand: autograd of the row's mean loss over the grid's timesteps and `flips`,
    × F^(-1/2), × a dense P."""
    model, grid = workspace.model, workspace.settings.scoring
    params = model.parameter_group(method.unlearn.group)
    example = int(workspace.caption_rows[row])
    x0 = torch.from_numpy(np.array(workspace.latents[example:example + 1]))
    cond = torch.from_numpy(np.array(workspace.conditioning[row:row + 1]))
    steps = grid.timestep_values(model.num_timesteps)
    losses = []
    with torch.enable_grad():
        for p in params.values():
            p.requires_grad_(True)
        for t in steps:
            for flip in flips:
                key = 0 if grid.noise == "shared" else example  # shared noise: every example draws example 0's
                noise = ops.gaussian_noise(grid.seed, key, int(t), flip, x0.shape[1:])
                x = mirrored(x0, torch.tensor([flip]))
                losses.append(model.loss(x, cond, torch.tensor([int(t)]), noise.reshape(x0.shape))[0])
        grads = torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))
        for p in params.values():
            p.requires_grad_(False)
    projector = SparseProjector(params, method.dim, method.projection_seed)
    total = torch.zeros(method.dim, dtype=torch.float64)
    for (name, _), g in zip(params.items(), grads):
        scaled = g.double() * fit_fisher(workspace)[name].double().rsqrt()
        bucket, sign = projector.buckets[name]
        total += dense_projection(bucket, sign, method.dim) @ scaled.flatten()
    return total


@pytest.mark.parametrize("flips", ["mean", "max"])
def test_stage1_features_are_the_projected_per_example_gradients(setting, flips):
    workspace, _ = setting
    method = LinearisedAbU(SETTINGS, dim=64, flips=flips)
    features = np.asarray(method.row_features(workspace), np.float64)
    rows = len(workspace.caption_rows)
    assert features.shape == (rows, 1 if flips == "mean" else 2, 64)
    for row in (0, 13, rows - 1):  # first chunk, second, the last (partial) one
        for f, which in enumerate([(0, 1)] if flips == "mean" else [(0,), (1,)]):
            explicit = _explicit_feature(workspace, method, row, which).numpy()
            got = features[row, f]
            np.testing.assert_allclose(got, explicit, rtol=2e-3, atol=2e-3 * np.abs(explicit).max())


def test_stage1_scores_are_the_product_over_an_images_rows(setting):
    workspace, queries = setting
    method = LinearisedAbU(SETTINGS, dim=64)
    scores = method.score(workspace, queries)
    features = np.asarray(method.row_features(workspace), np.float64)  # (R, 2, dim)
    vectors = np.stack([method.query_vector(workspace, q) for q in queries]).astype(np.float64)
    per_row = features @ vectors.T  # (R, 2, Q)
    rows = workspace.caption_rows
    expected = np.stack([[SETTINGS.step.size * per_row[rows == i, :, q].mean(0).max() for i in range(N)]
                         for q in range(2)])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_stage1_is_the_first_order_loss_change_of_a_small_step(setting):
    """The linearisation's claim: for one small step, τ¹ is the exact rise of each image's loss (mean over flips, the
    rule stage 1 linearises), up to the projection and second-order terms."""
    workspace, queries = setting
    small = dataclasses.replace(SETTINGS, step=FixedStep(1e-7))
    linear = LinearisedAbU(small, dim=4096, flips="mean").score(workspace, queries)
    larger_flip = LinearisedAbU(small, dim=4096).score(workspace, queries)
    exact = attribute_by_unlearning(workspace, queries, small)
    base, rows = np.asarray(fit_base_losses(workspace), np.float64), workspace.caption_rows
    for q, record in enumerate(exact.records):
        after = np.asarray(workspace.losses(f"{record['folder']}/losses_after"), np.float64)
        change = (after - base).mean((1, 2))
        rise = np.array([change[rows == i].mean() for i in range(N)])
        assert np.corrcoef(linear[q], rise)[0, 1] > 0.9, np.corrcoef(linear[q], rise)
        assert 0.8 < (linear[q] @ rise) / (linear[q] @ linear[q]) < 1.25  # the same scale, not only the same order
        # flips="max" linearises the exact score itself (the larger flip's rise)
        assert np.corrcoef(larger_flip[q], exact.scores[q])[0, 1] > 0.9, np.corrcoef(larger_flip[q], exact.scores[q])


# ------------------------------------------------------------------------------------------------- stage 2
def test_every_candidate_is_exact_abu_bit_for_bit(setting):
    workspace, queries = setting
    exact = attribute_by_unlearning(workspace, queries, SETTINGS).scores
    every = TwoStageAbU(SETTINGS, candidates=N).attribute(workspace, queries)
    np.testing.assert_array_equal(every.scores, exact)
    assert every.records[0]["two_stage"]["candidates"] == N and "of 24" in every.records[0]["candidates"]


def test_few_candidates_keep_their_exact_scores_and_rank_first(setting):
    workspace, queries = setting
    exact = attribute_by_unlearning(workspace, queries, SETTINGS).scores
    method = TwoStageAbU(SETTINGS, candidates="25%", front=LinearisedAbU(SETTINGS, dim=256))
    two_stage = method.attribute(workspace, queries)
    front = method.front.score(workspace, queries)
    for q in range(2):
        record = two_stage.records[q]
        candidates = workspace.store.load_npy(record["two_stage"]["exact"])
        assert len(candidates) == 6 and set(candidates) == set(ranking(front[q])[:6])
        np.testing.assert_array_equal(two_stage.scores[q][candidates], exact[q][candidates])
        order = ranking(two_stage.scores[q])
        assert set(order[:6]) == set(candidates)
        assert np.all(np.diff(front[q][order[6:]]) <= 0)  # the rest in stage 1's order
    again = method.attribute(workspace, queries)  # a second call reads every artefact back
    np.testing.assert_array_equal(again.scores, two_stage.scores)


def test_combine_puts_the_rest_below_in_front_order():
    exact = np.array([0.0, 5.0, 0.0, 1.0, 0.0], np.float32)
    front = np.array([3.0, 9.0, -1.0, 8.0, np.nan])
    scores = combine(exact, front, np.array([1, 3]))
    assert ranking(scores).tolist() == [1, 3, 0, 2, 4] and np.isnan(scores[4])
    assert scores[0] - scores[2] == pytest.approx(4.0)  # the front's gaps kept below the candidates


def test_candidate_counts_and_their_errors():
    assert candidate_count("10%", 3953) == 396 and candidate_count(50, 40) == 40 and candidate_count(0.5, 3) == 2
    assert resolve_candidates(None, 10) is None and resolve_candidates("100%", 10) is None
    assert resolve_candidates("auto", 100) is None and resolve_candidates("auto", 10 ** 6) == 250_000
    assert resolve_candidates("5%", 1000) == 50
    for bad in (0, "0", "-3", "0%", "120%", "ten", 1.5, True, "nan%"):
        with pytest.raises(SettingsError, match="candidates must be"):
            candidate_count(bad, 10)
    with pytest.raises(SettingsError, match="raw score rule"):
        TwoStageAbU(UnlearnSettings(score="normalised"))
    with pytest.raises(SettingsError, match="dim must be"):
        build_method("abu-linear", dim=0)
    assert isinstance(build_method("abu-two-stage", candidates="5%"), TwoStageAbU)


def test_the_attributor_runs_the_two_stage_query_and_reports_it(setting, tmp_path, monkeypatch):
    workspace, queries = setting
    attributor = Attributor(workspace.model, workspace.dataset, workspace.store.path, workspace.settings, progress=False)
    attribution = attributor.attribute(queries[:1], SETTINGS, candidates="50%")
    assert attribution.records[0]["two_stage"]["candidates"] == 12
    html = open(attribution.save(str(tmp_path / "out"))["report"], encoding="utf-8").read()
    assert "12 of 24" in html and "two-stage" in html
    exact = attributor.attribute(queries[:1], SETTINGS, candidates="100%")  # every image: the exact query itself
    assert "two_stage" not in exact.records[0]
    # auto takes the exact query for settings the two-stage one refuses, whatever N
    monkeypatch.setattr(two_stage_module, "AUTO_EXACT_BELOW", 1)
    assert "two_stage" in attributor.attribute(queries[:1], SETTINGS, candidates="auto").records[0]
    normalised = dataclasses.replace(SETTINGS, score="normalised")
    assert "two_stage" not in attributor.attribute(queries[:1], normalised, candidates="auto").records[0]
    with pytest.raises(SettingsError, match="raw score rule"):
        attributor.attribute(queries[:1], normalised, candidates="50%")


# ------------------------------------------------------------------------------------------------- the fronts
def test_latent_cosine_is_the_larger_cosine_of_the_sketched_latents(setting):
    workspace, queries = setting
    method = LatentCosine(dim=96)
    scores = method.score(workspace, queries)
    model = workspace.model
    projector = SparseProjector({"latent": torch.Size(model.latent_shape)}, 96, 0)
    dense = dense_projection(*projector.buckets["latent"], 96)
    rows = torch.from_numpy(np.array(workspace.latents)).double().flatten(1) @ dense.T
    rows = rows / rows.norm(dim=1, keepdim=True)
    for q, query in enumerate(queries):
        x0 = model.encode_images(query.image[None]).double()
        views = torch.cat([x0, x0.flip(-1)]).flatten(1) @ dense.T
        views = views / views.norm(dim=1, keepdim=True)
        expected = (rows @ views.T).max(1).values.numpy()
        np.testing.assert_allclose(scores[q], expected, rtol=2e-3, atol=2e-3)
    assert scores.argmax(1).tolist() == [4, 19]  # each query is a training image: its own latent is nearest


class _Fixed(AttributionMethod):
    """A front with given scores (the union's logic, apart from any model)."""

    def __init__(self, name, scores):
        self.name, self.values = name, np.asarray(scores, np.float32)

    def settings(self):
        return {"values": self.values.tolist()}

    def attribute(self, workspace, queries):
        return SimpleNamespace(scores=self.values[None])  # what RankUnion reads of an Attribution

    def score(self, workspace, queries):
        return self.values[None]


def test_rank_union_orders_by_the_best_rank_under_any_front():
    first = _Fixed("a", [5.0, 4.0, 3.0, 2.0, 1.0, 0.0])   # ranks 0 1 2 3 4 5
    second = _Fixed("b", [0.0, 1.0, 2.0, 3.0, 9.0, np.nan])  # ranks 4 3 2 1 0 5 (NaN last)
    union = RankUnion((first, second))
    scores = union.score(None, [None])[0]
    # best ranks: 0→0, 4→0, 1→1, 3→1, 2→2, 5→5; ties by the first front's rank
    assert ranking(scores).tolist() == [0, 4, 1, 3, 2, 5] and union.name == "a-and-b"


def test_the_default_front_brings_the_querys_own_copy_into_a_tiny_candidate_set(setting):
    """Stage 1's linearisation alone can miss a memorised copy (its gradient is near 0 at its own minimum); the
    latent front finds it, so even C = 2 gives exact AbU's top image."""
    workspace, queries = setting
    exact = attribute_by_unlearning(workspace, queries, SETTINGS).scores
    two_stage = TwoStageAbU(SETTINGS, candidates=2).attribute(workspace, queries).scores
    assert ranking(two_stage[0])[0] == ranking(exact[0])[0] == 4
    assert ranking(two_stage[1])[0] == ranking(exact[1])[0] == 19
