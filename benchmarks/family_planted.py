"""The planted-duplicate test of every family (tests/models/test_families.py) under both score rules: the ranks of the
copies among the 24 training images, raw scores against calibrated ones, after the same fine-tune.

    python3 benchmarks/family_planted.py [--families sd,sdxl,...] [--steps 200] [--out benchmarks/results/family_planted.json]

The pipelines are the tests' tiny random ones; each family is fine-tuned on 21 default images and 3 copies of a
distinctive pattern, then the pattern is attributed with the scale-free "rise" step (α = 0.5).
"""
import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_families as planted_case  # noqa: E402
from unlearn_fast.data import open_dataset  # noqa: E402

RULES = {"raw": dataclasses.replace(planted_case.PLANTED, score="raw"), "calibrated": planted_case.PLANTED}


def copy_ranks(scores: np.ndarray, copies: list[int]) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    return sorted(int(np.flatnonzero(order == c)[0]) + 1 for c in copies)


def run_family(name: str, root: Path, dataset, steps: int) -> list[dict]:
    started = time.perf_counter()
    model = planted_case.load_family_model(name, root / "pipeline")
    all_scores, copies = planted_case.planted_scores(model, root, dataset, list(RULES.values()), steps=steps)
    seconds = round(time.perf_counter() - started, 1)
    rows = []
    for rule, scores in zip(RULES, all_scores):
        ranks = copy_ranks(scores, copies)
        rows.append({"family": name, "fine_tune_steps": steps, "score": rule, "copy_ranks": ranks,
                     "copies_first": ranks == list(range(1, len(copies) + 1)), "images": len(copies) + 21,
                     "seconds_both_rules": seconds})
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
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}",
              "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
