"""The planted-duplicate test of every family (tests/test_families.py) under both score rules: the ranks of the
copies among the 24 training images, raw scores against calibrated ones, after the same fine-tune.

    python3 benchmarks/family_planted.py [--families sd,sdxl,...] [--steps 200] [--out benchmarks/results/family_planted.json]

The pipelines are the tests' tiny random ones; each family is fine-tuned on 21 default images and 3 copies of a
distinctive pattern, then the pattern is attributed with the scale-free "rise" step (α = 0.5).
"""
import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_families as planted_case  # noqa: E402
from unlearn_fast.attributor import Attributor  # noqa: E402
from unlearn_fast.data import open_dataset  # noqa: E402
from unlearn_fast.engine.scoring import LossGrid  # noqa: E402
from unlearn_fast.engine.unlearn import UnlearnSettings  # noqa: E402
from unlearn_fast.query import query_from_array  # noqa: E402
from unlearn_fast.workspace import PrepareSettings  # noqa: E402

RULES = {"raw": UnlearnSettings(step="rise", alpha=0.5, draws=16),
         "calibrated": planted_case.PLANTED}


def copy_ranks(scores: np.ndarray, copies: list[int]) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    return sorted(int(np.flatnonzero(order == c)[0]) + 1 for c in copies)


def run_family(name: str, root: Path, dataset, steps: int) -> list[dict]:
    model = planted_case.load_family_model(name, root / "pipeline")
    started = time.perf_counter()
    images, planted, copies = planted_case.planted_set(root / "images", model, dataset, steps=steps)
    settings = PrepareSettings(scoring=LossGrid(timesteps=3, flips=False, seed=1, noise="shared"), chunk_rows=8)
    attributor = Attributor(model, open_dataset(str(images)), root / "work", settings, progress=False)
    attributor.prepare()
    prepared = time.perf_counter() - started
    query = query_from_array(planted, "zebra stripes", model.resolution)
    rows = []
    for rule, unlearn in RULES.items():
        started = time.perf_counter()
        ranks = copy_ranks(attributor.attribute([query], unlearn).scores[0], copies)
        rows.append({"family": name, "fine_tune_steps": steps, "score": rule, "copy_ranks": ranks,
                     "copies_first": ranks == list(range(1, len(copies) + 1)), "images": len(copies) + 21,
                     "fine_tune_and_prepare_s": round(prepared, 1), "attribute_s": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(planted_case.FAMILIES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "family_planted.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = open_dataset("default")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.families.split(","):
            rows += run_family(name, Path(scratch) / name, dataset, args.steps)
    record = {"command": "python3 benchmarks/family_planted.py " + " ".join(sys.argv[1:]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 1 torch thread, torch {torch.__version__}",
              "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
