"""The harness's metrics against values computed by hand."""
import math

import numpy as np
import pytest

from unlearn_fast.evaluate.metrics import average_precision, mean_and_se, recall_at_k
from unlearn_fast.ranking import ranking
from unlearn_fast.evaluate.validation import mean_reciprocal_rank


def test_ranking_breaks_ties_by_index_and_puts_nan_last():
    assert ranking(np.array([0.5, np.nan, 0.9, 0.5])).tolist() == [2, 0, 3, 1]


def test_recall_at_k_by_hand():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6])  # ranking: 0, 2, 3, 5, 4, 1
    assert recall_at_k(scores, [2, 4], 2) == 0.5  # top 2 = {0, 2}: one of two
    assert recall_at_k(scores, [2, 4], 5) == 1.0
    assert recall_at_k(scores, [1], 5) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(scores, [], 3)


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6])  # ranking: 0, 2, 3, 5, 4, 1
    # relevant {2, 4} at ranks 2 and 5: precisions 1/2 and 2/5 → AP = (0.5 + 0.4) / 2
    assert average_precision(scores, [2, 4]) == pytest.approx(0.45)
    assert average_precision(scores, [0, 2]) == pytest.approx(1.0)
    # relevant {1} last of 6: AP = 1/6
    assert average_precision(scores, [1]) == pytest.approx(1 / 6)


def test_mean_and_se_by_hand():
    mean, se = mean_and_se([1.0, 2.0, 3.0, 6.0])
    # mean 3; sample variance ((−2)² + (−1)² + 0² + 3²) / 3 = 14/3; SE = sqrt(14/3) / 2
    assert mean == 3.0 and se == pytest.approx(math.sqrt(14 / 3) / 2)
    assert mean_and_se([5.0])[0] == 5.0 and math.isnan(mean_and_se([5.0])[1])
    assert all(math.isnan(v) for v in mean_and_se([]))


def test_mean_reciprocal_rank_by_hand():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    # query 0: answers {0, 2} → best rank 2 (index 2); query 1: answer {1} at rank 2 → MRR (1/2 + 1/2) / 2
    assert mean_reciprocal_rank(scores, [[0, 2], [1]]) == pytest.approx(0.5)
    assert mean_reciprocal_rank(scores, [[1], [0]]) == pytest.approx(1.0)


def test_evaluate_logs_its_progress_through_python_logging(capsys, caplog):
    """The evaluation's progress goes to the unlearn_fast loggers (no log= callback threaded through the calls):
    --quiet keeps only warnings, --verbose everything, and stdout stays for the tables and --json."""
    import argparse
    import logging

    from unlearn_fast.cli.evaluate import _configure_logging
    from unlearn_fast.training import retraining

    logger = logging.getLogger("unlearn_fast")
    for quiet, verbose, level in ((False, False, logging.INFO), (True, False, logging.WARNING),
                                  (False, True, logging.DEBUG)):
        _configure_logging(argparse.Namespace(quiet=quiet, verbose=verbose))
        assert logger.level == level
    assert sum(getattr(h, "_unlearn_fast", False) for h in logger.handlers) == 1  # configured once, not per call
    _configure_logging(argparse.Namespace(quiet=False, verbose=False))
    with caplog.at_level(logging.INFO, logger="unlearn_fast"):
        assert retraining.run_jobs("unused", []) == {}
    assert any(r.name == "unlearn_fast.training.retraining" and "retraining: 0 runs" in r.getMessage()
               for r in caplog.records)
    assert capsys.readouterr().out == ""
