"""Judges a query-independent ranking cannot fool (issue 28): centred LDS and the hub correlation and share, each
against hand-computed values and against a constructed query-independent ranking; the sensitivity score, the image
group and the trust signals."""
import zlib

import numpy as np
import pytest

from unlearn_fast.evaluate.metrics import (centred_linear_datamodeling_scores, hub_correlation, hub_share,
                                           linear_datamodeling_scores, spearman)

MASKS = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], bool)


def test_centred_lds_by_hand():
    scores = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    losses = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 5.0], [4.0, 0.0], [3.0, 1.0]])
    # predictions (M, Q): q0 = [1, 0, 1, 0, 1], q1 = [0, 0, 2, 2, 0]; centred over q: ±(q0 − q1)/2
    # q0: centred prediction [0.5, 0, -0.5, -1, 0.5], centred -loss: -(l0 - l1)/2 = [1, 0, 2.5, -2, -1]
    expected_q0 = spearman([0.5, 0, -0.5, -1, 0.5], [1, 0, 2.5, -2, -1])
    expected_q1 = spearman([-0.5, 0, 0.5, 1, -0.5], [-1, 0, -2.5, 2, 1])
    np.testing.assert_allclose(centred_linear_datamodeling_scores(scores, MASKS, losses), [expected_q0, expected_q1])


def test_a_query_independent_ranking_wins_standard_lds_and_scores_nothing_centred():
    """Every query's loss falls with the same 'hub' images in the subset (the shared component), plus its own."""
    rng = np.random.default_rng(0)
    masks = rng.random((40, 30)) < 0.5
    hub = rng.random(30)
    own = rng.random((4, 30))
    losses = -(masks @ (3 * hub)[:, None]) - 0.3 * (masks @ own.T)  # (M, Q)
    independent = np.tile(hub, (4, 1))  # the same ranking for every query
    specific = own
    standard = linear_datamodeling_scores(independent, masks, losses)
    assert standard.min() > 0.8  # standard LDS rewards the hub ranking
    assert np.isnan(centred_linear_datamodeling_scores(independent, masks, losses)).all()
    assert centred_linear_datamodeling_scores(specific, masks, losses).min() > 0.5


def test_hub_correlation_and_share_flag_a_query_independent_ranking():
    rng = np.random.default_rng(1)
    shared = rng.random(200)
    independent = shared + 1e-3 * rng.random((6, 200))
    specific = rng.random((6, 200))
    assert hub_correlation(independent).min() > 0.99 and hub_share(independent) == pytest.approx(1.0)
    assert abs(hub_correlation(specific)).max() < 0.3 and hub_share(specific) < 0.3


def test_hub_correlation_and_share_by_hand():
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    # q0 against the mean of q1, q2 = [2, 1.5, 2.5]: ranks [3,2,1] vs [2,1,3]
    assert hub_correlation(scores)[0] == pytest.approx(spearman([3, 2, 1], [2, 1.5, 2.5]))
    # top-1 of each query: 0, 2, 0 → the single most frequent image takes 2 of 3 places
    assert hub_share(scores, k=1, hubs=1) == pytest.approx(2 / 3)


def test_the_sensitivity_score_by_hand():
    from unlearn_fast.score_rules import by_sensitivity

    scores = np.array([2.0, 1.0, 3.0, 0.5])
    reference = np.array([[1.0, 0.0, 3.0, 0.0], [-1.0, 0.0, 3.0, 0.0]])  # RMS 1, 0, 3, 0
    # images 1 and 3 no reference moves: divided by the smallest positive RMS (1)
    np.testing.assert_allclose(by_sensitivity(scores, reference), [2.0, 1.0, 1.0, 0.5])
    with pytest.raises(ValueError):
        by_sensitivity(scores, reference[:, :3])


def test_the_image_group_is_the_image_pathway_of_the_default_model():
    from unlearn_fast.models.adapter import DiffusionModel

    model = DiffusionModel.load("default")
    image, kv = model.parameter_group("image"), model.parameter_group("kv")
    assert not set(image) & set(kv) and not any(".attn2." in name for name in image)
    assert {n for n in image if "resnets" in n and n.endswith("conv1.weight")}  # convolutions
    assert {n for n in image if ".attn1.to_q." in n}  # self-attention
    everything = dict(model.unet.named_parameters())
    expected = {n for n in everything if n.endswith(".weight") and (
        ".attn1.to_" in n or ".ff.net." in n or n.split(".")[-2].startswith("conv") and "norm" not in n)}
    assert set(image) == expected


class _Scored:
    def __init__(self, scores):
        self.scores = np.asarray(scores, np.float32)


def _fake_workspace(monkeypatch, score_of):
    """trust_signals over a stand-in for the unlearning: score_of(query) -> (N,) scores."""
    from types import SimpleNamespace

    from unlearn_fast.methods.abu import method as abu
    from unlearn_fast.query import Query

    rng = np.random.default_rng(3)
    references = [Query(image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), prompt=f"reference {r}",
                        source=f"reference {r}") for r in range(4)]
    monkeypatch.setattr(abu, "reference_queries", lambda workspace, count: references[:count])
    monkeypatch.setattr(abu, "attribute_by_unlearning",
                        lambda workspace, queries, settings: _Scored([score_of(q) for q in queries]))
    return SimpleNamespace(model=SimpleNamespace(resolution=8)), Query(
        image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), prompt="red apple", source="query")


def test_the_trust_signal_flags_a_query_independent_ranking(monkeypatch):
    from unlearn_fast.engine.unlearn import UnlearnSettings
    from unlearn_fast.trust import trust_signals, verdict

    hubs = np.random.default_rng(0).random(50)
    def score_of(q):
        return hubs + 1e-4 * (zlib.crc32(q.prompt.encode()) % 7)

    workspace, query = _fake_workspace(monkeypatch, score_of)
    signal = trust_signals(workspace, [query], score_of(query)[None], UnlearnSettings(), controls=False)[0]
    assert signal["hub_correlation"] > 0.99 and signal["specificity"] < 0.01
    assert "mostly the one every query gets" in verdict(signal)


def test_the_trust_signal_says_when_the_answer_follows_the_caption(monkeypatch):
    from unlearn_fast.engine.unlearn import UnlearnSettings
    from unlearn_fast.trust import trust_signals, verdict

    def by_prompt(q):  # a method that reads only the prompt: every image under one prompt gets one ranking
        return np.random.default_rng(zlib.crc32(q.prompt.encode())).random(50)

    workspace, query = _fake_workspace(monkeypatch, by_prompt)
    signal = trust_signals(workspace, [query], by_prompt(query)[None], UnlearnSettings(), controls=True)[0]
    assert signal["caption_only"] == 1.0 and signal["image_only"] <= 0.5 and abs(signal["hub_correlation"]) < 0.5
    assert "follows the caption" in verdict(signal)
