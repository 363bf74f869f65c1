"""The default model's attributions keep their bits through the model-family refactor (issue 15): the scores,
base losses and generated query recorded before it (tests/default_scores_case.py record) are recomputed and compared.

Bit for bit where the CPU signature matches the recording's (oneDNN's kernels round differently per instruction
set); elsewhere to float32 rounding, with the signature in the message.
"""
import numpy as np

from default_scores_case import RECORDING, compute, cpu_signature


def test_the_default_model_scores_as_it_did_before_the_refactor(tmp_path):
    recorded = np.load(RECORDING)
    got = compute(tmp_path)
    assert set(got) == set(recorded.files) - {"cpu"}
    same_machine = str(recorded["cpu"]) == cpu_signature()
    for name, values in got.items():
        if same_machine:
            np.testing.assert_array_equal(values, recorded[name], err_msg=name)
        else:
            np.testing.assert_allclose(values, recorded[name], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name} (recorded on {recorded['cpu']}, here {cpu_signature()})")
