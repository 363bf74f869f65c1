"""Choose the unlearning defaults on validation prompts: which (α, S, M, Fisher or SGD) puts a prompt's own training
image highest when attributing an image generated from that prompt.

Validation prompts are captions of default-set images drawn with a fixed seed (VALIDATION_SEED), excluding every
prompt a test, a benchmark or the demo scores with. Ground truth by construction: the training image whose caption
the prompt is should rank near the top. Metrics per setting: mean reciprocal rank of that image, hits in the top 10.

    OMP_NUM_THREADS=1 python3 benchmarks/tune_unlearning.py --work-dir /tmp/tune --out benchmarks/results/tuning

--methods runs registry methods (AbU variants by name, e.g. abu abu-kv abu-all-normalised@7.5e-7, and baselines such
as dtrak or pixel) instead of the CANDIDATES below; the work directory then takes the variants' scoring noise and a
Fisher that covers every group they unlearn.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
import torch

from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.attributor import Attributor, PrepareSettings
from unlearn_fast.data import open_dataset
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.query import query_from_prompt
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.evaluate.validation import VALIDATION_SEED, validation_prompts
from unlearn_fast.engine.unlearn import UnlearnSettings

# Prompts scored elsewhere (demo, tests, benchmarks, README samples): never validation prompts.
RESERVED = {"red apple", "grinning face", "cat face", "flag: Japan", "thumbs up"}

CANDIDATES = {
    "paper MSCOCO (S=1, α=0.01), M=500": UnlearnSettings(step=AlphaOverN(0.01), steps=1, draws=500),
    "S=1, α=0.01, M=2000": UnlearnSettings(step=AlphaOverN(0.01), steps=1, draws=2000),
    "S=1, α=0.1, M=500": UnlearnSettings(step=AlphaOverN(0.1), steps=1, draws=500),
    "S=1, α=0.03, M=500": UnlearnSettings(step=AlphaOverN(0.03), steps=1, draws=500),
    "S=1, α=0.3, M=500": UnlearnSettings(step=AlphaOverN(0.3), steps=1, draws=500),
    "S=1, α=1, M=500": UnlearnSettings(step=AlphaOverN(1.0), steps=1, draws=500),
    "S=1, α=0.1, M=2000": UnlearnSettings(step=AlphaOverN(0.1), steps=1, draws=2000),
    "paper SD (S=100→10, α=0.1, M=160)": UnlearnSettings(step=AlphaOverN(0.1), steps=10, draws=160),
    "SGD, α=100, M=500": UnlearnSettings(step=AlphaOverN(100.0), steps=1, draws=500, precondition=False),
    "SGD, α=10000, M=500": UnlearnSettings(step=AlphaOverN(1e4), steps=1, draws=500, precondition=False),
}


def _method(spec: str):
    """A registry method from NAME or NAME@VALUE (an AbU variant at VALUE in its own step rule's unit)."""
    from unlearn_fast.methods import build_method

    name, _, value = spec.partition("@")
    method = build_method(name)
    return build_method(name, step=method.unlearn.step.with_value(float(value))) if value else method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--out", required=True, help="results path without suffix (.json and .md are written)")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--timesteps", type=int, default=4)
    parser.add_argument("--flips", action="store_true")
    parser.add_argument("--fisher-examples", type=int, help="Fisher over a seeded subset of rows (the demo's 1,024)")
    parser.add_argument("--only", action="append", help="run only these candidate names")
    parser.add_argument("--methods", nargs="+", help="registry methods instead of CANDIDATES; NAME@ALPHA sets an AbU "
                        "variant's α")
    args = parser.parse_args()

    methods = {spec: _method(spec) for spec in args.methods or ()}
    abus = [m for m in methods.values() if hasattr(m, "unlearn")]
    noise = {m.preparation.get("noise", LossGrid.noise) for m in abus} or {"example"}
    if len(noise) > 1:
        raise SystemExit(f"--methods: the AbU variants need different scoring noise keys {sorted(noise)}")
    groups = {m.unlearn.group for m in abus if m.unlearn.precondition} - {"kv"}
    model, dataset = DiffusionModel.load("default"), open_dataset("default")
    settings = PrepareSettings(scoring=LossGrid(timesteps=args.timesteps, flips=args.flips, batch_size=128,
                                                noise=noise.pop()),
                               fisher_examples=args.fisher_examples, fisher_group="all" if groups else "kv")
    attributor = Attributor(model, dataset, args.work_dir, settings, progress=False).prepare()
    prompts = validation_prompts(dataset, args.prompts, VALIDATION_SEED, RESERVED)
    queries = [query_from_prompt(model, prompt, seed=0) for prompt, _ in prompts]
    results = {}
    candidates = methods or CANDIDATES
    for name, unlearn in candidates.items():
        if args.only and name not in args.only:
            continue
        started, ranks = time.perf_counter(), []
        try:
            if methods:
                from unlearn_fast.methods import run_method

                attribution = run_method(unlearn, attributor.workspace, queries)
            else:
                attribution = attributor.attribute(queries, unlearn)
        except FloatingPointError as error:
            results[name] = {"error": str(error)}
            continue
        for q, (_, truth) in enumerate(prompts):
            position = np.empty(len(dataset), dtype=np.int64)
            position[attribution.order(q)] = np.arange(1, len(dataset) + 1)
            ranks.append(int(position[truth].min()))
        ranks = np.array(ranks)
        results[name] = {"settings": unlearn.settings() if methods else dataclasses.asdict(unlearn), "ranks": ranks.tolist(),
                         "mrr": float((1.0 / ranks).mean()), "hits_at_10": int((ranks <= 10).sum()),
                         "median_rank": float(np.median(ranks)), "seconds": round(time.perf_counter() - started, 1)}
        print(name, results[name], flush=True)
    record = {"prompts": [p for p, _ in prompts], "prepare": settings.manifest(), "num_train": len(dataset),
              "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as handle:
        json.dump(record, handle, indent=2)
    lines = [f"Validation prompts ({len(prompts)}): " + ", ".join(f"'{p}'" for p, _ in prompts), "",
             "| setting | rank of the prompt's own image, per prompt | MRR | hits@10 | median rank | s |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | |")
        else:
            lines.append(f"| {name} | {r['ranks']} | {r['mrr']:.3f} | {r['hits_at_10']} | {r['median_rank']:.0f} | "
                         f"{r['seconds']} |")
    with open(args.out + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
