"""Do the fast paths change the answer? τ rankings of one query on the shipped model, side by side:

- fused ops (noise regenerated in-kernel, C++ backend) vs the reference path (stored noise, torch.flip,
  DiffusionModel.loss; the reference Fisher op), on the whole default set: top-100 identical?
- bf16 autocast vs fp32 scoring, on a seeded subset (bf16 is emulated, ~13x slower, on CPUs without AVX512-BF16).

    python3 benchmarks/ranking_agreement.py --work-dir /tmp/agree --results benchmarks/results/ranking_agreement
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from unlearn_fast.attributor import Attributor, PrepareSettings
from unlearn_fast.data import SubsetDataset, open_dataset
from unlearn_fast.engine.fisher import FisherSettings
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.query import query_from_prompt
from unlearn_fast.engine.loss_grid import LossGrid


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(a: np.ndarray, b: np.ndarray, ks=(10, 50, 100)) -> dict:
    order_a, order_b = np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")
    out = {"spearman": spearman(a, b), "max_abs_diff": float(np.abs(a - b).max()),
           "max_rel_diff_of_max": float(np.abs(a - b).max() / np.abs(a).max())}
    for k in ks:
        if k <= len(a):
            out[f"top{k}_overlap"] = len(set(order_a[:k]) & set(order_b[:k])) / k
            out[f"top{k}_same_order"] = bool((order_a[:k] == order_b[:k]).all())
    return out


def scores(model, dataset, work_dir, scoring: LossGrid, fisher_backend: str, query):
    settings = PrepareSettings(scoring=scoring, fisher=FisherSettings(backend=fisher_backend))
    started = time.perf_counter()
    attribution = Attributor(model, dataset, work_dir, settings, progress=False).attribute([query])
    return attribution.scores[0], round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--prompt", default="red apple")
    parser.add_argument("--bf16-images", type=int, default=500)
    args = parser.parse_args()
    model, dataset = DiffusionModel.load("default"), open_dataset("default")
    query = query_from_prompt(model, args.prompt, seed=0)
    grid = LossGrid(timesteps=4, flips=True, batch_size=128)
    record = {"prompt": args.prompt, "scoring": dataclasses.asdict(grid), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                              time.gmtime())}
    fused, t_fused = scores(model, dataset, os.path.join(args.work_dir, "fused"), grid, "auto", query)
    reference, t_ref = scores(model, dataset, os.path.join(args.work_dir, "reference"),
                              dataclasses.replace(grid, path="stored-noise"), "reference", query)
    record["fused_vs_reference"] = compare(fused, reference) | {"images": len(dataset), "seconds": [t_fused, t_ref]}

    chosen = np.sort(np.random.default_rng(0).choice(len(dataset), args.bf16_images, replace=False))
    subset = SubsetDataset(dataset, chosen)
    fp32, t32 = scores(model, subset, os.path.join(args.work_dir, "fp32"), grid, "auto", query)
    bf16, t16 = scores(model, subset, os.path.join(args.work_dir, "bf16"), dataclasses.replace(grid, dtype="bf16"),
                       "auto", query)
    record["bf16_vs_fp32"] = compare(bf16, fp32, ks=(10, 50)) | {"images": len(subset), "seconds": [t16, t32]}
    with open(args.results + ".json", "w") as handle:
        json.dump(record, handle, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
