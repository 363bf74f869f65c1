"""Planted duplicates at full size: the whole default set plus R copies of a distinctive image under a new caption;
the shipped model fine-tuned on it; AbU (Fisher step, the defaults) beside plain SGD ascent at several step sizes.

    OMP_NUM_THREADS=1 python3 benchmarks/planted_duplicates.py --out-dir /tmp/planted --results benchmarks/results/planted

Writes <results>.json and <results>.md (share of the R copies in the top R, their ranks, chance level).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from unlearn_fast.attributor import PrepareSettings
from unlearn_fast.data import open_dataset
from unlearn_fast.evaluate.planted import PlantedSetup, run_planted
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.methods.abu.recipes import PAPER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="data, model and work directory of the experiment")
    parser.add_argument("--results", required=True, help="results path without suffix")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=600)
    args = parser.parse_args()

    # The paper's recipe (step α/N, noise keyed per image), as results/planted.md was recorded with.
    paper = {k: v for k, v in PAPER.items() if k != "noise"}
    defaults = UnlearnSettings(**paper)
    methods = {f"AbU (Fisher; S={defaults.steps}, α={defaults.step.alpha}, M={defaults.draws})": defaults}
    for alpha in (1.0, 100.0, 1e4):
        methods[f"SGD ascent (α={alpha:g}, M={defaults.draws})"] = UnlearnSettings(
            **{**paper, "step": AlphaOverN(alpha)}, precondition=False)
    setup = PlantedSetup(copies=args.copies, finetune_steps=args.finetune_steps)
    settings = PrepareSettings(scoring=LossGrid(timesteps=4, flips=True, batch_size=128, noise=PAPER["noise"]))
    started = time.perf_counter()
    result, _ = run_planted("default", open_dataset("default"), setup, args.out_dir, settings, methods, quiet=True)
    record = {"setup": vars(setup), "prepare": settings.manifest(), "result": json.loads(result.to_json()),
              "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(args.results + ".json", "w") as handle:
        json.dump(record, handle, indent=2)
    lines = [f"{setup.copies} copies among {len(result.planted) and result.planted[0]} default images "
             f"(chance share {result.chance:.4f}); fine-tune {setup.finetune_steps} steps "
             f"(loss {result.finetune.get('first_loss', 0):.3f} → {result.finetune.get('final_loss', 0):.3f}).", "",
             f"| method | copies in the top {setup.copies} | ranks of the copies |", "|---|---:|---|"]
    for name, share in result.shares.items():
        lines.append(f"| {name} | {share:.0%} | {result.ranks[name]} |")
    with open(args.results + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
