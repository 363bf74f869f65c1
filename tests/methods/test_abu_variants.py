"""AbU's variants (issue 13): score rules, step rules, noise keys, the paper recipe, α grids that extend."""
import copy

import numpy as np
import pytest
import torch

from unlearn_fast.engine.step_rules import AlphaOverN, FixedStep, LossRise
from unlearn_fast.attributor import Attributor, PrepareSettings
from unlearn_fast.data import SubsetDataset, export_imagefolder, open_dataset
from unlearn_fast.errors import SettingsError
from unlearn_fast.engine.fisher import FisherSettings
from unlearn_fast.methods import build_method, run_method
from unlearn_fast.methods.abu.method import query_folder
from unlearn_fast.score_rules import calibrate, loss_change_scores
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.unlearn import RISE_TOLERANCE, UnlearnSettings, query_gradient, query_loss, unlearn

UNLEARN = dict(step=AlphaOverN(1e-4), draws=24, batch_size=24)


def settings(noise: str = "example") -> PrepareSettings:
    return PrepareSettings(scoring=LossGrid(timesteps=2, flips=False, batch_size=64, seed=5, noise=noise),
                           fisher=FisherSettings(batch_size=64, seed=5), chunk_rows=16)


@pytest.fixture(scope="module")
def twins(tmp_path_factory, default_dataset):
    """24 default images, the last one an exact copy of the first (same bytes, same caption)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("twins")
    export_imagefolder(SubsetDataset(default_dataset, range(360, 383)), str(folder))
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    shutil.copy(folder / first["file_name"], folder / "twin.png")
    (folder / "metadata.jsonl").write_text("\n".join(lines + [json.dumps({**first, "file_name": "twin.png"})]) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def query(red_apple_query):
    return red_apple_query


# ------------------------------------------------------------------------------------------------- score rules
def test_normalised_score_is_the_relative_change_of_the_timestep_mean():
    before = np.array([[[1.0], [3.0]], [[0.5], [0.5]]])  # (rows 2, timesteps 2, flips 1)
    after = np.array([[[2.0], [4.0]], [[0.5], [1.5]]])
    scores = loss_change_scores(before, after, np.array([0, 1]), 2, "normalised")
    # row 0: mean before 2, after 3 -> 1/5; row 1: before 0.5, after 1.0 -> 0.5/1.5
    np.testing.assert_allclose(scores, [0.2, 1 / 3], rtol=1e-6)
    raw = loss_change_scores(before, after, np.array([0, 1]), 2, "raw")
    np.testing.assert_allclose(raw, [1.0, 0.5], rtol=1e-6)  # raw ranks row 0 first, normalised row 1


def test_calibration_subtracts_the_references_mean_and_divides_by_their_spread():
    reference = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]])
    scores = np.array([4.0, 1.0, 2.0])
    np.testing.assert_allclose(calibrate(scores, reference), [2.0, 1.0, 0.0])
    std0 = np.std([1.0, 3.0], ddof=1)
    # images 1 and 2 have no spread over the references: they keep their centred score
    np.testing.assert_allclose(calibrate(scores, reference, spread=True), [2.0 / std0, 1.0, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="R >= 2"):
        calibrate(scores, reference[:1], spread=True)


def test_unknown_rules_are_refused_naming_the_choices():
    with pytest.raises(SettingsError, match="step: expected RULE.* one of fixed, alpha/N, rise"):
        UnlearnSettings(step="newton")
    with pytest.raises(SettingsError, match="score must be one of"):
        UnlearnSettings(score="zscore")
    with pytest.raises(SettingsError, match="noise must be one of"):
        LossGrid(noise="per-batch")
    with pytest.raises(SettingsError, match="unknown AbU variant|unknown method"):
        build_method("abu-newton")


# ------------------------------------------------------------------------------------------- the paper recipe
def test_the_paper_recipe_is_one_alpha_over_n_step_along_the_preconditioned_gradient(model, query):
    """θ_after = θ0 + α/N · ĝ/F exactly (float64 update, cast once), with the raw loss change as score."""
    params = model.parameter_group("kv")
    fisher = {n: torch.rand_like(p) + 0.5 for n, p in params.items()}
    x0, cond = model.encode_images(query.image[None]), model.encode_text([query.prompt])
    paper = build_method("abu-paper", **UNLEARN).unlearn
    unet = unlearn(model, fisher, x0, cond, paper, num_train=40)
    fresh = copy.deepcopy(model.unet)
    copies = dict(fresh.named_parameters())
    g = query_gradient(model, fresh, {n: copies[n] for n in params}, x0, cond, paper, 0)
    after = dict(unet.named_parameters())
    for name, p in params.items():
        expected = (p.double() + (paper.step.alpha / 40) * (g[name] / fisher[name].double())).float()
        torch.testing.assert_close(after[name], expected, rtol=0, atol=0)


def test_the_paper_recipes_query_folder_keeps_its_pre_variant_key(model, twins, query, tmp_path):
    """Folders made before the variants existed are reused: the key of the paper's settings did not change."""
    folder = query_folder(query, UnlearnSettings(**UNLEARN))
    import hashlib
    import json
    old = {"steps": 1, "alpha": 1e-4, "draws": 24, "seed": 0, "group": "kv", "precondition": True, "num_train": None}
    assert folder.endswith(hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:8])
    assert "noise" not in settings().manifest()["scoring"]  # the manifest of older folders still matches


# --------------------------------------------------------------------------------------------- the fixed step
def test_the_fixed_step_is_alpha_whatever_n_and_alpha_over_n_where_they_meet(model, query):
    """step "fixed": θ_after = θ0 + α · ĝ/F for any N; at α_fixed = α/N it is the paper's step to the bit."""
    params = model.parameter_group("kv")
    fisher = {n: torch.rand_like(p) + 0.5 for n, p in params.items()}
    x0, cond = model.encode_images(query.image[None]), model.encode_text([query.prompt])
    fixed = UnlearnSettings(step=FixedStep(1e-4 / 40), draws=24, batch_size=24)
    records = [{}, {}]
    small, large = (unlearn(model, fisher, x0, cond, fixed, num_train=n, record=r) for n, r in zip((40, 4000), records))
    paper = unlearn(model, fisher, x0, cond, UnlearnSettings(**UNLEARN), num_train=40)
    assert records[0]["steps"][0]["scale"] == records[1]["steps"][0]["scale"] == 1e-4 / 40
    weights = [dict(unet.named_parameters()) for unet in (small, large, paper)]
    for name in params:
        assert torch.equal(weights[0][name], weights[1][name]) and torch.equal(weights[0][name], weights[2][name])
    moved = [name for name, p in params.items() if not torch.equal(weights[0][name], p)]
    assert moved, "the step changed no weight"


def test_a_label_names_the_same_method_at_other_settings():
    small, large = build_method("abu-fixed@small", step="fixed:1e-6"), build_method("abu-fixed@large", step="fixed:1e-5")
    assert (small.unlearn.step, small.preparation) == (FixedStep(1e-6), {"noise": "shared"})
    assert large.unlearn.step == FixedStep(1e-5) and large.settings() == {**small.settings(), "step": "fixed:1e-05"}
    with pytest.raises(SettingsError, match=r"alpha is gone: give step=RULE:VALUE .* --set abu.step=alpha/N:0.01"):
        build_method("abu", alpha=0.01)
    with pytest.raises(SettingsError, match="unknown method 'abux'"):
        build_method("abux@small")


# ---------------------------------------------------------------------------------------------- the rise rule
def test_the_rise_step_raises_the_querys_loss_by_alpha_whatever_n(model, query):
    params = model.parameter_group("kv")
    fisher = {n: torch.full_like(p, 1e-3) for n, p in params.items()}
    x0, cond = model.encode_images(query.image[None]), model.encode_text([query.prompt])
    rise = UnlearnSettings(step=LossRise(0.2), draws=32, batch_size=32)
    before = query_loss(model, model.unet, x0, cond, rise, 0)
    records = []
    for n in (40, 4000):
        record = {}
        unet = unlearn(model, fisher, x0, cond, rise, num_train=n, record=record)
        achieved = query_loss(model, unet, x0, cond, rise, 0) / before - 1
        assert abs(achieved - 0.2) <= RISE_TOLERANCE * 0.2 + 1e-9, (n, achieved)
        records.append(record["steps"][0])
    assert records[0] == records[1]  # the step does not depend on N
    alpha_over_n = {}
    unlearn(model, fisher, x0, cond, UnlearnSettings(step=AlphaOverN(0.2), draws=32, batch_size=32), num_train=40,
            record=alpha_over_n)
    assert alpha_over_n["steps"][0]["scale"] == pytest.approx(0.2 / 40)


def test_the_rise_steps_loss_does_not_depend_on_the_batch_size(model, query):
    x0, cond = model.encode_images(query.image[None]), model.encode_text([query.prompt])
    losses = {b: query_loss(model, model.unet, x0, cond, UnlearnSettings(step=LossRise(), draws=24, batch_size=b), 0)
              for b in (5, 24, 128)}
    assert len(set(losses.values())) == 1, losses


# ------------------------------------------------------------------------------- MUCS's cap and retained rows
def test_the_untrained_loss_is_the_mean_squared_target_on_the_rise_draws(model, query):
    from unlearn_fast import ops
    from unlearn_fast.engine.fisher import keyed_timesteps
    from unlearn_fast.engine.unlearn import RISE_DRAWS, untrained_loss

    x0 = model.encode_images(query.image[None])
    cap = UnlearnSettings(step=AlphaOverN(0.1), draws=8, batch_size=8, cap=True)
    d = torch.arange(8, 8 + RISE_DRAWS)
    noise = ops.gaussian_noise(cap.seed, 0, d, 0, x0.shape[1:])
    t = keyed_timesteps(cap.seed, 0, d, model.scheduler.config.num_train_timesteps)
    by_hand = model.target(x0.expand(len(d), -1, -1, -1), noise, t).double().pow(2).mean().item()
    assert untrained_loss(model, x0, model.encode_text([query.prompt]), cap, 0) == pytest.approx(by_hand, rel=1e-9)


def test_the_cap_stops_a_long_step_at_the_untrained_models_loss_and_leaves_a_short_one(model, query):
    from unlearn_fast.engine.unlearn import CAP_BISECTIONS, untrained_loss

    params = model.parameter_group("kv")
    fisher = {n: torch.full_like(p, 1e-3) for n, p in params.items()}
    x0, cond = model.encode_images(query.image[None]), model.encode_text([query.prompt])
    long = UnlearnSettings(step=AlphaOverN(50.0), draws=16, batch_size=16)
    cap = untrained_loss(model, x0, cond, long, 0)
    assert query_loss(model, unlearn(model, fisher, x0, cond, long, num_train=1), x0, cond, long, 0) > cap
    record = {}
    capped = unlearn(model, fisher, x0, cond, UnlearnSettings(**{**long.__dict__, "cap": True}), num_train=1,
                     record=record)
    after = query_loss(model, capped, x0, cond, long, 0)
    assert record["steps"][0]["capped"] and after <= cap
    assert 0 < record["steps"][0]["scale"] < 50.0
    # The bisection's last interval is 50 / 2^CAP_BISECTIONS wide: one more such step passes the cap.
    beyond = UnlearnSettings(**{**long.__dict__, "step": AlphaOverN(record["steps"][0]["scale"] + 50.0 / 2 ** CAP_BISECTIONS)})
    assert query_loss(model, unlearn(model, fisher, x0, cond, beyond, num_train=1), x0, cond, long, 0) > cap
    short = UnlearnSettings(step=AlphaOverN(1e-4), draws=16, batch_size=16)
    plain = dict(unlearn(model, fisher, x0, cond, short, num_train=1).named_parameters())
    kept = dict(unlearn(model, fisher, x0, cond, UnlearnSettings(**{**short.__dict__, "cap": True}),
                        num_train=1).named_parameters())
    for name in params:
        torch.testing.assert_close(kept[name], plain[name], rtol=0, atol=0)  # below the cap: the same step


def test_retained_rows_are_descended_on_by_hand(model, query, default_dataset):
    """retain R: θ_after = θ0 + α/N · (ĝ_query − ĝ_retained)/F, ĝ_retained the mean gradient of R rows' own draws."""
    from unlearn_fast import ops
    from unlearn_fast.data import load_pixels
    from unlearn_fast.engine.fisher import keyed_timesteps
    from unlearn_fast.engine.unlearn import RETAIN_KEY, retained_gradient

    params = model.parameter_group("kv")
    fisher = {n: torch.rand_like(p) + 0.5 for n, p in params.items()}
    x0, cond = model.encode_images(query.image[None]), model.encode_text([query.prompt])
    rows = [3, 7, 11]
    x0_r = model.encode_images(load_pixels(default_dataset, model.resolution, rows))
    cond_r = model.encode_text([default_dataset.captions(i)[0] for i in rows])
    keep = UnlearnSettings(step=AlphaOverN(1e-3), draws=16, batch_size=2, retain=3)
    fresh = copy.deepcopy(model.unet)
    copies = dict(fresh.named_parameters())
    group = {n: copies[n] for n in params}
    kept = retained_gradient(model, fresh, group, x0_r, cond_r, keep, 0)
    d = RETAIN_KEY + torch.arange(3)
    t = keyed_timesteps(keep.seed, 0, d, model.scheduler.config.num_train_timesteps)
    noise = ops.gaussian_noise(keep.seed, 0, d, 1, x0.shape[1:])
    loss = model.loss(x0_r, cond_r, t, noise, unet=fresh).mean()
    by_autograd = torch.autograd.grad(loss, list(group.values()))
    for name, g in zip(group, by_autograd):
        torch.testing.assert_close(kept[name].float(), g, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="retained rows"):
        unlearn(model, fisher, x0, cond, keep, num_train=10)
    unet = unlearn(model, fisher, x0, cond, keep, num_train=10, retained=lambda step: (x0_r, cond_r))
    g = query_gradient(model, fresh, group, x0, cond, keep, 0)
    after = dict(unet.named_parameters())
    for name, p in params.items():
        expected = (p.double() + (keep.step.alpha / 10) * ((g[name] - kept[name]) / fisher[name].double())).float()
        torch.testing.assert_close(after[name], expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- noise keys
@pytest.mark.parametrize("noise", ["example", "shared"])
def test_identical_images_score_alike_only_with_shared_noise(model, twins, query, tmp_path, noise):
    attributor = Attributor(model, open_dataset(twins), tmp_path, settings(noise), progress=False)
    method = build_method("abu-shared-noise" if noise == "shared" else "abu-paper", **UNLEARN)
    scores = run_method(method, attributor, [query]).scores[0]
    assert np.abs(scores).max() > 0
    gap = abs(scores[0] - scores[23]) / np.abs(scores).max()
    # Shared: equal up to float rounding (the copies sit in batches of other sizes, so oneDNN picks other kernels).
    assert gap < 1e-4 if noise == "shared" else gap > 1e-2, gap


def test_a_variant_refuses_a_work_dir_prepared_with_another_noise_key(model, twins, query, tmp_path):
    attributor = Attributor(model, open_dataset(twins), tmp_path, settings("example"), progress=False)
    with pytest.raises(SettingsError, match="prepared with 'example'"):
        run_method(build_method("abu-shared-noise", **UNLEARN), attributor, [query])


def test_dtrak_with_shared_noise_gives_identical_images_identical_features(model, twins, tmp_path):
    attributor = Attributor(model, open_dataset(twins), tmp_path, settings(), progress=False)
    shared = build_method("dtrak-shared-noise", dim=64, timesteps=2, group="kv")
    features = np.asarray(shared.training_features(attributor.workspace.prepare()))
    scale = np.abs(features).max()
    assert np.abs(features[0] - features[23]).max() < 1e-5 * scale  # equal up to float rounding (batch position)
    per_example_method = build_method("dtrak", dim=64, timesteps=2, group="kv")
    per_example = np.asarray(per_example_method.training_features(attributor.workspace))
    assert np.abs(per_example[0] - per_example[23]).max() > 1e-2 * scale


# ------------------------------------------------------------------------------------------------ calibration
def test_calibrated_scores_reuse_the_reference_queries_and_the_querys_unlearning(model, twins, query, tmp_path):
    attributor = Attributor(model, open_dataset(twins), tmp_path, settings(), progress=False)
    raw = run_method(build_method("abu-paper", **UNLEARN), attributor, [query]).scores[0]
    folders = lambda: sorted(p.name for p in (tmp_path / "queries").iterdir())  # noqa: E731
    assert len(folders()) == 1
    calibrated = run_method(build_method("abu-calibrated", references=3, **UNLEARN), attributor, [query]).scores[0]
    assert len(folders()) == 4  # the query's folder (reused) and one per reference query
    refs = np.stack([run_method(build_method("abu-paper", **UNLEARN), attributor, [q]).scores[0]
                     for q in attributor.reference_queries(3)])
    np.testing.assert_allclose(calibrated, raw - refs.mean(axis=0), rtol=1e-5, atol=1e-9)
    run_method(build_method("abu-calibrated", references=3, spread=True, **UNLEARN), attributor, [query])
    assert len(folders()) == 4  # a second reading of the same unlearning computes nothing new
    normalised = run_method(build_method("abu-normalised", **UNLEARN), attributor, [query]).scores[0]
    assert len(folders()) == 4 and not np.allclose(normalised, raw)


# -------------------------------------------------------------------------------------------- steps on validation
def test_the_step_grid_extends_until_the_best_is_inside_and_keeps_its_rule(monkeypatch):
    from unlearn_fast.evaluate import validation

    tried = []

    def fake_choose(attributor, make_method, candidates, validation_set, record_path, identity):
        tried.append(sorted(rule.value for rule in candidates.values()))
        assert {type(rule) for rule in candidates.values()} == {AlphaOverN} and identity["rule"] == "alpha/N"
        mrr = {name: -abs(np.log(rule.value / 0.001)) for name, rule in candidates.items()}  # best at α = 0.001
        best = max(mrr, key=mrr.get)
        return best, candidates[best], mrr

    monkeypatch.setattr(validation, "choose_setting", fake_choose)
    stand_in = type("Attributor", (), {"model": None, "dataset": None})()
    judged = validation.Validation("mrr", [], lambda scores: 0.0)
    chosen = validation.choose_step(stand_in, AlphaOverN(0.03), (1 / 3, 1.0, 3.0), "abu-paper", {}, judged, None)
    # two extensions down (each grid value rounded to 3 significant digits)
    assert tried[-1][0] == pytest.approx(0.01 / 9, rel=1e-3) and chosen.alpha == pytest.approx(0.01 / 9, rel=1e-3)
    tried.clear()
    chosen = validation.choose_step(stand_in, AlphaOverN(0.001), (0.3, 1.0, 10.0), "abu-paper", {}, judged, None)
    assert len(tried) == 1 and chosen == AlphaOverN(0.001)  # inside the grid: no extension


def test_the_command_line_builds_the_variants_settings():
    from unlearn_fast.cli.main import _unlearn_settings, build_parser

    def parsed(*options):
        args = build_parser().parse_args(["attribute", "--work-dir", "w", "--prompt", "x", *options])
        return _unlearn_settings(args)

    assert parsed() == UnlearnSettings() == UnlearnSettings(step=FixedStep(7.5e-6))  # the Python API's default is
    # the command line's: a fixed, validated step …
    assert parsed("--recipe", "paper") == UnlearnSettings(step=AlphaOverN(0.1))  # … and the paper's, as it ran before
    chosen = parsed("--step", "rise:0.3", "--score", "calibrated", "--references", "3", "--spread", "--curvature",
                    "ekfac")
    assert (chosen.step, chosen.score, chosen.references, chosen.spread, chosen.curvature) == \
        (LossRise(0.3), "calibrated", 3, True, "ekfac")
    assert parsed("--step", "rise").step == LossRise() and parsed("--step", "fixed=2e-6").step == FixedStep(2e-6)
    mucs = parsed("--cap", "--retain", "32")
    assert (mucs.cap, mucs.retain) == (True, 32) and parsed().cap is False
    args = build_parser().parse_args(["prepare", "--work-dir", "w", "--noise", "shared"])
    from unlearn_fast.cli import _prepare_settings

    assert _prepare_settings(args).scoring.noise == "shared"
    # … with noise shared by default (the default recipe's), keyed per example for the paper's recipe
    assert _prepare_settings(build_parser().parse_args(["prepare", "--work-dir", "w"])).scoring.noise == "shared"
    paper = build_parser().parse_args(["attribute", "--work-dir", "w", "--prompt", "x", "--recipe", "paper"])
    assert _prepare_settings(paper).scoring.noise == "example"
