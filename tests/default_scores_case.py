"""One small attribution on the default model, run the same way by the recorder and by the test that compares with
its recording (tests/methods/test_default_scores_unchanged.py): AbU (the default recipe and the paper's) and D-TRAK on 24
default images, for a query generated from a prompt and a seed (so generation is covered too).

    python3 tests/default_scores_case.py record     # writes tests/data/default_scores.npz (only when meant to)
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import torch

RECORDING = Path(__file__).with_name("data") / "default_scores.npz"
ROWS = range(360, 384)


def cpu_signature() -> str:
    """What decides float rounding of the CPU kernels here: the machine, torch's build and its CPU capability."""
    return f"{platform.machine()} {torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def compute(work: Path, query_image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scores (1, 24) of AbU with shared and with per-image noise, and of D-TRAK; base losses; the generated query.
    query_image: attribute this image (the recorded query) instead of the one generated here, so that a grey level
    another CPU rounds differently in generation does not reach the scores' comparison."""
    from unlearn_fast.attributor import Attributor
    from unlearn_fast.data import SubsetDataset, open_dataset
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.engine.step_rules import AlphaOverN
    from unlearn_fast.engine.unlearn import UnlearnSettings
    from unlearn_fast.methods import build_method, run_method
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.query import query_from_array, query_from_prompt
    from unlearn_fast.workspace import PrepareSettings

    torch.set_num_threads(1)
    model = DiffusionModel.load("default")
    data = SubsetDataset(open_dataset("default"), ROWS)
    query = query_from_prompt(model, "red apple", seed=5, steps=4)
    out = {"query": query.image}
    if query_image is not None:
        query = query_from_array(query_image, query.prompt, model.resolution, source="recorded query")
    for noise in ("shared", "example"):
        settings = PrepareSettings(scoring=LossGrid(timesteps=2, flips=True, seed=3, noise=noise), fisher_examples=16)
        attributor = Attributor(model, data, work / noise, settings, progress=False)
        attributor.prepare()
        out[f"abu_{noise}"] = attributor.attribute([query], UnlearnSettings(step=AlphaOverN(0.003), draws=16)).scores
        out[f"base_losses_{noise}"] = np.asarray(attributor.base_losses)
    out["dtrak"] = run_method(build_method("dtrak"), attributor.workspace, [query]).scores
    return out


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        arrays = compute(Path(tmp))
    RECORDING.parent.mkdir(exist_ok=True)
    np.savez_compressed(RECORDING, cpu=np.array(cpu_signature()), **arrays)
    print({k: v.shape for k, v in arrays.items()}, cpu_signature())
