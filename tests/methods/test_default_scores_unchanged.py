"""The default model's attributions keep their numbers through refactors (issue 15's model families onward): the
scores, base losses and generated query recorded then (tests/default_scores_case.py record) are recomputed and
compared.

Never bit for bit: two CPUs with one torch build and one reported capability (an EPYC and a Xeon with AVX-512 FP16
both say AVX512) round differently in oneDNN's kernels. So the generated uint8 query must agree within one grey level
in a few values (50 steps of float32 denoising can move a pixel across a rounding boundary), and the scores and
losses, computed from the recorded query so that such a pixel cannot reach them, to float32 rounding.
"""
import numpy as np

from default_scores_case import RECORDING, compute, cpu_signature


def test_the_default_model_scores_as_it_did_before_the_refactor(tmp_path):
    recorded = np.load(RECORDING)
    got = compute(tmp_path, query_image=recorded["query"])
    assert set(got) == set(recorded.files) - {"cpu"}
    where = f"recorded on {recorded['cpu']}, here {cpu_signature()}"
    query, expected = got.pop("query"), recorded["query"]
    assert query.shape == expected.shape and query.dtype == np.uint8
    difference = np.abs(query.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1 and (difference > 0).mean() <= 0.01, (
        f"generated query: {int((difference > 0).sum())} of {difference.size} values differ, by up to "
        f"{int(difference.max())} ({where})")
    for name, values in got.items():
        np.testing.assert_allclose(values, recorded[name], rtol=1e-4, atol=1e-6, err_msg=f"{name} ({where})")
