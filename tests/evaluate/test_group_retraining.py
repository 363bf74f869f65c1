"""Group attribution against leave-one-group-out retraining: the judges by hand, the families, and the harness."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from unlearn_fast.evaluate.group_retraining import family_of, families, group_scores, judge
from unlearn_fast.evaluate.metrics import ndcg_at_k, top1_group
from unlearn_fast.groups import RULES

pytestmark = pytest.mark.slow  # training runs or subprocesses: the full tier, not the everyday one


def test_top1_and_ndcg_by_hand():
    truth = np.array([0.02, 0.05, -0.01])
    assert top1_group(np.array([0.3, 0.9, 0.1]), truth) == 1.0
    assert top1_group(np.array([0.9, 0.3, 0.1]), truth) == 0.0
    assert ndcg_at_k(np.array([0.3, 0.9, 0.1]), truth, 3) == pytest.approx(1.0)
    # order 0, 1, 2: gains 0.02, 0.05, 0 → (0.02 + 0.05/log2 3) / (0.05 + 0.02/log2 3)
    expected = (0.02 + 0.05 / math.log2(3)) / (0.05 + 0.02 / math.log2(3))
    assert ndcg_at_k(np.array([0.9, 0.3, 0.1]), truth, 3) == pytest.approx(expected)
    # k = 1: only the first group counts; a loss that fell is no gain
    assert ndcg_at_k(np.array([0.1, 0.3, 0.9]), truth, 1) == 0.0
    assert math.isnan(ndcg_at_k(np.array([0.1, 0.3, 0.9]), np.array([-0.1, 0.0, -0.2]), 3))


def test_judge_averages_over_queries():
    predicted = np.array([[1.0, 0.0], [1.0, 0.0]])
    truth = np.array([[0.2, 0.1], [0.1, 0.2]])
    table = judge(predicted, truth)
    assert table["top1"]["mean"] == pytest.approx(0.5)
    assert table["per_query_top1"] == [1.0, 0.0]


def test_families_strip_only_the_skin_tone():
    assert family_of("old woman: light skin tone") == "old woman"
    assert family_of("old woman") == "old woman"
    assert family_of("couple with heart: woman, man, medium skin tone, dark skin tone") == "couple with heart"
    assert family_of("flag: Japan") == "flag: Japan"
    captions = ["old woman", "old woman: dark skin tone", "flag: Japan", "flag: France", "joker"]
    assert families(captions) == {"old woman": [0, 1]}


def test_group_scores_follow_the_rule():
    scores = np.array([[1.0, 2.0, 3.0, 10.0]])
    rows = [[0, 1, 2], [3]]
    assert group_scores(scores, rows, "sum").tolist() == [[6.0, 10.0]]
    assert group_scores(scores, rows, "mean").tolist() == [[2.0, 10.0]]
    assert group_scores(scores, rows, "max").tolist() == [[3.0, 10.0]]


def test_the_cli_judges_every_rule_against_retraining(tmp_path):
    out = tmp_path / "groups"
    done = subprocess.run([sys.executable, "-m", "unlearn_fast", "evaluate", "groups", "--profile", "tiny",
                           "--out", str(out), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    split = json.loads((out / "split.json").read_text())
    train_captions = [json.loads(line)["text"] for line in (out / "data" / "metadata.jsonl").read_text().splitlines()]
    # each group's training rows are one family; its held-out members (the queries) are not trained on
    for name, rows in split["groups"].items():
        assert rows and {family_of(train_captions[r]) for r in rows} == {name}
    for query in split["queries"]:
        assert family_of(query["prompt"]) == query["group"] and query["prompt"] not in train_captions
    truth = np.array(summary["delta_loss"])
    assert truth.shape == (len(split["queries"]), len(split["groups"])) and np.isfinite(truth).all()
    assert set(summary["table"]) == {"by construction (the query's own family)", "abu", "pixel", "random"}
    for by_rule in summary["table"].values():
        assert set(by_rule) == set(RULES)
    own = summary["table"]["by construction (the query's own family)"]["top-mean"]["top1"]["mean"]
    assert own == pytest.approx(summary["truth_is_own_family"])
    assert (out / "groups.md").is_file() and "NDCG@3" in (out / "groups.md").read_text()
