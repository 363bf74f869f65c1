"""Methods side by side (comparison.Comparison): ranks, agreement and the files, against direct computations."""
import csv
import json
import os

import numpy as np
import pytest
from scipy.stats import spearmanr

from unlearn_fast.attribution import Attribution
from unlearn_fast.comparison import Comparison
from unlearn_fast.data import SubsetDataset, load_pixels
from unlearn_fast.query import Query

LABELS = {"abu": ("AbU (attribution by unlearning)", "loss after − before"), "dtrak": ("D-TRAK", "kernel weight"),
          "pixel": ("Pixel similarity", "cosine of pixels")}


@pytest.fixture()
def comparison(default_dataset, tmp_path):
    dataset = SubsetDataset(default_dataset, range(200, 240))
    queries = [Query(image=load_pixels(default_dataset, 32, [i])[0], prompt=f"query {i}", source="test")
               for i in (205, 230)]
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 40)).astype(np.float32)
    attributions = {}
    for m, (name, (title, meaning)) in enumerate(LABELS.items()):
        scores = base + (0.5 * m) * rng.standard_normal((2, 40)).astype(np.float32)  # related, not equal
        records = [{"folder": f"methods/{name}", "query": f"q{q}", "prompt": queries[q].prompt, "source": "test",
                    "method": name, "method_title": title,
                    "score_meaning": meaning} for q in range(2)]
        attributions[name] = Attribution(scores=scores, queries=queries, records=records, dataset=dataset,
                                         work_dir=str(tmp_path))
    return Comparison(attributions)


def test_ranks_and_agreement_match_direct_computations(comparison):
    k = 7
    for q in range(2):
        for name, attribution in comparison.attributions.items():
            order = np.argsort(-attribution.scores[q], kind="stable")
            # rank r (1-based) of every image: its position in the descending order
            assert [comparison.positions(name, q)[i] for i in order[:5]] == [1, 2, 3, 4, 5]
            top = comparison.top(name, q, k)
            assert [row["index"] for row in top] == order[:k].tolist()
            for row in top:
                for other, rank in row["ranks"].items():
                    other_order = np.argsort(-comparison.attributions[other].scores[q], kind="stable")
                    assert other_order[rank - 1] == row["index"]
        for pair in comparison.agreement(q, k):
            a, b = (comparison.attributions[m].scores[q] for m in (pair["a"], pair["b"]))
            common = set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k])
            assert pair["top_k_overlap"] == len(common) / k
            assert pair["spearman"] == pytest.approx(spearmanr(a, b).statistic, abs=1e-4)
        agreed = comparison.agreed(q, k)
        for row in agreed:
            inside = [m for m, a in comparison.attributions.items()
                      if row["index"] in np.argsort(-a.scores[q], kind="stable")[:k]]
            assert sorted(row["methods"]) == sorted(inside) and len(inside) >= 2
        counts = [len(row["methods"]) for row in agreed]
        assert counts == sorted(counts, reverse=True)


def test_saved_folder_holds_every_method_and_reads_back(comparison, tmp_path):
    paths = comparison.save(str(tmp_path / "out"), top_k=5)
    out = tmp_path / "out"
    record = json.loads((out / "comparison.json").read_text())
    assert [m["name"] for m in record["methods"]] == list(LABELS)
    assert [m["title"] for m in record["methods"]] == [title for title, _ in LABELS.values()]
    for name in LABELS:  # each method's own attribution folder, its report labelled with that method
        assert np.array_equal(np.load(out / name / "scores.npy"), comparison.attributions[name].scores)
        assert f"Attribution: {LABELS[name][0]}" in (out / name / "report.html").read_text()
    with open(out / "comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        q, i = int(row["query"]), int(row["index"])
        for name in LABELS:
            assert int(row[f"rank_{name}"]) == comparison.positions(name, q)[i]
            assert float(row[f"score_{name}"]) == comparison.attributions[name].scores[q, i]
    tops = {(q, int(i)) for q in range(2) for a in comparison.attributions.values()
            for i in np.argsort(-a.scores[q], kind="stable")[:5]}
    assert {(int(r["query"]), int(r["index"])) for r in rows} == tops
    page = open(paths["report"]).read()
    assert page.count('<th class="method"') == 2 * len(LABELS)  # one labelled column per method, per query
    again = Comparison.load(str(out), dataset=comparison.dataset)
    assert again.methods == list(LABELS)
    for name in LABELS:
        assert np.array_equal(again.attributions[name].scores, comparison.attributions[name].scores)


def test_methods_compared_on_different_queries_are_refused(comparison):
    first = comparison.attributions["abu"]
    fewer = Attribution(scores=first.scores[:1], queries=first.queries[:1], records=first.records[:1],
                        dataset=first.dataset)
    with pytest.raises(ValueError, match="different queries"):
        Comparison({"abu": first, "pixel": fewer})


def test_a_single_method_report_is_titled_and_scored_as_that_method(comparison, tmp_path):
    """A D-TRAK attribution's report says D-TRAK and its score, never AbU's τ."""
    comparison.attributions["dtrak"].save(str(tmp_path / "dtrak"), top_k=3)
    page = (tmp_path / "dtrak" / "report.html").read_text()
    assert "<h1>Attribution: D-TRAK</h1>" in page and "kernel weight" in page
    assert "τ" not in page and "unlearning" not in page


def test_average_ranks_match_the_definition_on_ties_and_spearman_matches_scipy():
    """ranking.average_ranks (vectorised, used by every Spearman of the package) against the definition: ties share
    the mean of the places they occupy."""
    from scipy.stats import rankdata

    from unlearn_fast.ranking import average_ranks, spearman

    values = np.random.default_rng(3).integers(0, 7, 200).astype(np.float64)  # many ties
    assert np.array_equal(average_ranks(values), rankdata(values, method="average"))
    other = values + np.random.default_rng(4).standard_normal(200)
    assert spearman(values, other) == pytest.approx(spearmanr(values, other).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))
