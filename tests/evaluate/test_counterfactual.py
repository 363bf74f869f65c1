"""The leave-K-out harness on a toy scale: removal plans and the counterfactual effect itself on ground truth by
construction (removing planted copies hurts more than random). The retraining jobs it runs: tests/training."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from unlearn_fast.data.dataset import SubsetDataset
from unlearn_fast.data.export import export_imagefolder
from unlearn_fast.evaluate.counterfactual import (CounterfactualSetup, QueryLosses, plan_removals, random_removals,
                                                  removal_sizes, training_request)
from unlearn_fast.evaluate.planted import AugmentedDataset, distinctive_image
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.query import query_from_array
from unlearn_fast.training import retraining
from unlearn_fast.training.run import TrainRequest

pytestmark = pytest.mark.slow  # training runs or subprocesses: the full tier, not the everyday one


def test_plan_removes_each_methods_top_k_and_shared_random_draws():
    setup = CounterfactualSetup(fractions=(0.1, 0.3), random_draws=2, methods=("m",))
    scores = {"m": np.array([[0.0, 9, 1, 8, 2, 7, 3, 6, 4, 5], [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]])}
    assert removal_sizes(setup, 10) == [1, 3]
    plan = plan_removals(setup, scores)
    top = {(e["query"], e["k"]): e["exclude"] for e in plan if e["method"] == "m"}
    assert top == {(0, 1): [1], (1, 1): [0], (0, 3): [1, 3, 5], (1, 3): [0, 1, 2]}
    random = [e for e in plan if e["method"] == "random"]
    assert len(random) == 4 and all(e["query"] is None for e in random)  # one set for every query
    for draw in range(2):  # nested across K, different across draws
        small, large = (set(random_removals(setup, 10, draw, k)) for k in (1, 3))
        assert small <= large and len(large) == 3
    assert random_removals(setup, 10, 0, 3) != random_removals(setup, 10, 1, 3)


@pytest.fixture(scope="module")
def planted_runs(tmp_path_factory, default_dataset):
    """40 default images + 6 copies of a distinctive image; the original model and three leave-6-out retrains."""
    root = tmp_path_factory.mktemp("counterfactual")
    base = SubsetDataset(default_dataset, range(0, 400, 10))
    image = distinctive_image(32, seed=3)
    export_imagefolder(AugmentedDataset(base, [image] * 6, ["zorblat quadrille"] * 6, "planted"), str(root / "data"))
    setup = CounterfactualSetup(steps=150, batch_size=16, warmup_steps=10, lr=2e-3)
    planted = list(range(40, 46))
    removals = {"planted": planted, "random 0": random_removals(setup, 46, 0, 6),
                "random 1": random_removals(setup, 46, 1, 6)}
    requests = {"original": training_request(setup, str(root / "data"))}
    requests.update({name: training_request(setup, str(root / "data"), exclude) for name, exclude in removals.items()})
    outcomes = retraining.run_jobs(str(root / "runs"), list(requests.values()))
    assert sorted(outcomes.values()) == ["trained"] * 4
    models = {name: DiffusionModel.load(retraining.model_folder(str(root / "runs"), r)) for name, r in requests.items()}
    return root, setup, removals, requests, models, image


def test_retrained_runs_record_exactly_their_removed_images(planted_runs):
    root, _, removals, requests, _, _ = planted_runs
    for name, exclude in removals.items():
        folder = retraining.model_folder(str(root / "runs"), requests[name])
        with open(os.path.join(folder, "training.json")) as handle:
            record = json.load(handle)
        assert record["request"]["exclude"] == sorted(exclude) and record["num_excluded"] == len(exclude)
        with open(os.path.join(os.path.dirname(folder), "job.json")) as handle:
            assert json.load(handle)["exclude"] == sorted(exclude)


def test_removing_the_planted_copies_raises_their_loss_more_than_random_removal(planted_runs):
    _, setup, _, _, models, image = planted_runs
    query = query_from_array(image, "zorblat quadrille", 32)
    losses = QueryLosses(setup, [query])
    base = losses(models["original"])[0]
    delta = {name: losses(models[name])[0] - base for name in ("planted", "random 0", "random 1")}
    print(f"\nΔL of the planted image: {delta}")
    assert delta["planted"] > 0
    assert delta["planted"] > 2 * max(delta["random 0"], delta["random 1"], 0.0)


def test_the_cli_runs_the_whole_evaluation_and_resumes(tmp_path):
    out = tmp_path / "cf"
    args = [sys.executable, "-m", "unlearn_fast", "evaluate", "counterfactual", "--profile", "tiny", "--out", str(out),
            "--train-images", "32", "--steps", "8", "--json"]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    table = json.loads(first.stdout)["table"]
    setup = CounterfactualSetup(fractions=(0.05, 0.2))
    ks = removal_sizes(setup, 32)
    for method in ("abu", "pixel", "random"):
        assert sorted(r["k"] for r in table if r["method"] == method) == ks
    assert [r["method"] for r in table].count("noise floor") == 1
    for name in ("results.md", "delta_loss.png", "delta_mse.png", "images.png", "results.json", "validation.json"):
        assert (out / name).is_file(), name
    assert (out / "attributions" / "pixel" / "report.html").is_file()
    summary = json.loads((out / "results.json").read_text())
    queries = len(summary["queries"])
    for method in ("abu", "pixel"):  # every query's loss under every other query's removal, per K
        assert sum(r["method"] == method for r in summary["cross_rows"]) == len(ks) * queries * (queries - 1)
        assert sorted(r["k"] for r in summary["specificity"] if r["method"] == method) == ks
    assert "Counterfactual specificity" in (out / "results.md").read_text()
    second = subprocess.run(args, capture_output=True, text=True)
    assert second.returncode == 0 and "0 to train" in second.stderr
    assert json.loads(second.stdout)["table"] == table


def test_paired_differences_against_random_removal_by_hand():
    from unlearn_fast.evaluate.counterfactual import paired_with_random

    def row(method, q, k, draw, loss):
        return {"method": method, "query": q, "k": k, "draw": draw, "delta_loss": loss}

    rows = [row("m", 0, 4, 0, 0.30), row("m", 1, 4, 0, 0.10),
            row("random", 0, 4, 0, 0.10), row("random", 0, 4, 1, 0.20),   # query 0: random mean 0.15
            row("random", 1, 4, 0, 0.00), row("random", 1, 4, 1, 0.10)]   # query 1: random mean 0.05
    (entry,) = paired_with_random(rows, ["m"], ["delta_loss"])
    # differences 0.15 and 0.05: mean 0.10, SE = std(ddof=1) / √2 = 0.0707… / 1.414… = 0.05
    assert entry["k"] == 4 and entry["delta_loss"]["n"] == 2
    assert entry["delta_loss"]["mean"] == pytest.approx(0.10) and entry["delta_loss"]["se"] == pytest.approx(0.05)


def test_specificity_is_a_querys_own_removal_against_the_other_queries_removals_by_hand():
    from unlearn_fast.evaluate.counterfactual import counterfactual_specificity

    own = [{"method": "m", "k": 2, "query": q, "delta_loss": loss} for q, loss in enumerate((0.5, 0.2, 0.3))]
    cross = [{"method": "m", "k": 2, "query": a, "removed_for": b, "delta_loss": loss}
             for (a, b), loss in {(0, 1): 0.1, (0, 2): 0.3, (1, 0): 0.2, (1, 2): 0.2, (2, 0): 0.0, (2, 1): 0.2}.items()]
    (entry,) = counterfactual_specificity(own, cross, ["m"])
    # per query: 0.5 − 0.2 = 0.3, 0.2 − 0.2 = 0.0, 0.3 − 0.1 = 0.2; mean 1/6, SE = std(ddof=1) / √3
    values = [0.3, 0.0, 0.2]
    assert entry["specificity"]["n"] == 3
    assert entry["specificity"]["mean"] == pytest.approx(np.mean(values))
    assert entry["specificity"]["se"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(3))
    # a query-independent ranking removes the same images for every query: A's loss moves alike, specificity 0
    same = [{**c, "delta_loss": own[c["query"]]["delta_loss"]} for c in cross]
    (flat,) = counterfactual_specificity(own, same, ["m"])
    assert flat["specificity"]["mean"] == pytest.approx(0.0)


@pytest.mark.parametrize("with_matplotlib", [True, False])
def test_the_report_plots_with_matplotlib_and_keeps_every_number_without_it(tmp_path, monkeypatch, caplog,
                                                                            with_matplotlib):
    """matplotlib is optional (the `plots` extra): without it the counterfactual report still writes its table and
    image grid, and says once which plots it skipped and how to get them."""
    import importlib.util

    from PIL import Image

    from unlearn_fast.evaluate import counterfactual_report

    if not with_matplotlib:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    (tmp_path / "queries").mkdir()
    (tmp_path / "retrains" / "run").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "queries" / "q0.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "retrains" / "run" / "image.png")
    cell = {"mean": 0.25, "se": 0.01, "n": 2}
    summary = {"table": [{"method": "abu", "k": 2, "fraction": 0.1, "delta_loss": cell, "delta_mse": cell}],
               "rows": [{"method": "abu", "query": 0, "k": 2, "draw": 0, "run": "run", "image": "image.png"}],
               "queries": ["a red apple"]}
    with caplog.at_level("WARNING"):
        paths = counterfactual_report.write_report(summary, str(tmp_path), str(tmp_path / "out"))
    assert "0.25" in (tmp_path / "out" / "results.md").read_text() and (tmp_path / "out" / "images.png").is_file()
    plots = {"delta_loss", "delta_mse"}
    if with_matplotlib:
        assert plots <= set(paths) and (tmp_path / "out" / "delta_loss.png").is_file()
        assert "matplotlib" not in caplog.text
    else:
        assert not plots & set(paths) and not (tmp_path / "out" / "delta_loss.png").exists()
        assert "pip install 'unlearn_fast[plots]'" in caplog.text
