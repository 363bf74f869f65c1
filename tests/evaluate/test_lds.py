"""The linear datamodeling score (evaluate/lds.py): the metric against hand-computed values and dattri's own, and the
tiny profile end to end: subset models trained once and shared, and no subset model ever shown a row outside its
subset."""
import json
import os

import numpy as np
import pytest
import torch

from unlearn_fast.evaluate.lds import (LDSSetup, linear_datamodeling_scores, plan_runs, run_lds, spearman,
                                       subset_masks, subset_rows)
from unlearn_fast.evaluate.profiles import PROFILES

pytestmark = pytest.mark.slow  # training runs or subprocesses: the full tier, not the everyday one


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 − 6·Σd² / (n(n² − 1)) = 1 − 12/60
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # Ties take their average rank: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4); Pearson of those ranks by hand.
    a, b = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4.0])
    expected = ((a - a.mean()) * (b - b.mean())).sum() / np.sqrt(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum())
    assert spearman([7, 7, 8, 9], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(expected)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_lds_on_a_toy_case_by_hand():
    """Four training rows, query 0 helped by rows 0 and 1 only. The subset holding both gets the lowest loss."""
    scores = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0]])
    masks = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]], bool)
    # g for query 0: (2, 1, 0); for query 1: (0, 1, 3). Losses: query 0 falls as g rises, query 1 rises with g.
    losses = np.array([[0.1, 0.7], [0.2, 0.8], [0.3, 0.9]])
    np.testing.assert_allclose(linear_datamodeling_scores(scores, masks, losses), [1.0, -1.0])
    with pytest.raises(ValueError, match="LDS needs scores"):
        linear_datamodeling_scores(scores, masks, losses.T)


def test_lds_matches_dattris_metric_on_the_same_arrays():
    metric = pytest.importorskip("dattri.metric")
    rng = np.random.default_rng(0)
    scores, losses = rng.normal(size=(5, 40)), rng.normal(size=(16, 5))
    setup = LDSSetup(subsets=16)
    masks = subset_masks(setup, 40)
    indices = torch.tensor(np.stack([subset_rows(setup, 40, m) for m in range(16)]))
    theirs, _ = metric.lds(torch.tensor(scores.T), (torch.tensor(-losses), indices))  # dattri: higher target = better
    np.testing.assert_allclose(linear_datamodeling_scores(scores, masks, losses), theirs.numpy(), atol=1e-12)


def test_subsets_are_seeded_halves_and_the_plan_names_each_run_once(tmp_path):
    setup = LDSSetup(subsets=8, ceiling_subsets=3)
    masks = subset_masks(setup, 101)
    assert (masks.sum(axis=1) == 50).all() and len({m.tobytes() for m in masks}) == 8
    np.testing.assert_array_equal(masks, subset_masks(setup, 101))  # seeded: the same on every run
    full, subsets, ceiling = plan_runs(setup, str(tmp_path), 101)
    assert full.exclude == [] and len(subsets) == 8 and len(ceiling) == 3
    for m, request in enumerate(subsets):
        assert sorted(set(request.exclude) | set(subset_rows(setup, 101, m).tolist())) == list(range(101))
        assert not set(request.exclude) & set(subset_rows(setup, 101, m).tolist())
    assert [r.exclude for r in ceiling] == [r.exclude for r in subsets[:3]] and {r.seed for r in ceiling} == {1}


def test_the_tiny_profile_trains_each_subset_once_for_every_method_and_never_shows_a_removed_row(tmp_path,
                                                                                              monkeypatch):
    from unlearn_fast.training import trainer

    seen = []  # (rows the training set allows, rows a step was given)
    original = trainer.TrainingSet.batch

    def recording(self, indices, generator):
        x0, captions, kept = original(self, indices, generator)
        seen.append((self.keep.clone(), indices[kept].clone()))
        return x0, captions, kept

    monkeypatch.setattr(trainer.TrainingSet, "batch", recording)
    values = dict(PROFILES["tiny"]["lds"])
    setup = LDSSetup(**values)
    out = tmp_path / "lds"
    first = run_lds(setup, str(out))
    runs = first["training_runs"]
    assert runs == {"full": 1, "subsets": 6, "ceiling": 3, "distinct": 10}
    assert len(os.listdir(out / "retrains")) == 10  # one folder per run
    masks = subset_masks(setup, first["num_train"])
    allowed = {m.numpy().tobytes() for m, _ in seen}
    assert allowed == {m.tobytes() for m in masks[:6]} | {np.ones(first["num_train"], bool).tobytes()}
    for keep, rows in seen:
        assert keep[rows].all()  # every row a step saw is in that run's subset
    assert {row["method"] for row in first["table"]} == {"abu", "pixel", "random", "ceiling (two seeds)"}
    assert all(np.isfinite(first["per_query"][name]).all() for name in ("abu", "pixel"))
    assert len(first["queries"]) == 4 and {q["kind"] for q in first["queries"]} == {"generated", "held-out"}

    # Another method on the same folder: its scores are new, no model is trained again.
    seen.clear()
    second = run_lds(LDSSetup(**{**values, "methods": ("abu", "pixel", "random", "trak"),
                                 "method_options": {"trak": {"dim": 64}}}), str(out))
    assert not seen and len(os.listdir(out / "retrains")) == 10
    assert "trak" in second["per_query"]
    np.testing.assert_allclose(second["per_query"]["pixel"], first["per_query"]["pixel"])
    with open(out / "results.json") as handle:
        assert json.load(handle)["training_runs"]["distinct"] == 10

    # Validation queries for choosing the step by LDS: split off after the evaluation queries, which stay as they were.
    third = run_lds(LDSSetup(**{**values, "validation_queries": 2, "selection": "lds", "abu_step_factors": (0.3, 1.0)}),
                    str(out))
    assert not seen and [q["prompt"] for q in third["queries"]] == [q["prompt"] for q in first["queries"]]
    validation = third["validation"]
    assert validation["criterion"] == "lds" and len(validation["queries"]) == 2
    assert not set(validation["queries"]) & {q["prompt"] for q in first["queries"]}
    with open(out / "validation-lds.json") as handle:
        record = json.load(handle)
    assert record["criterion"] == "lds" and record["chosen"] == max(record["values"], key=record["values"].get)
    assert validation["table"]["abu"]["options"]["step"] == record["chosen"]  # RULE:VALUE, the rule's own unit
    chosen = validation["table"]["abu"]["mean"]
    assert chosen == pytest.approx(record["values"][record["chosen"]])  # the table reports the chosen setting
