"""Apply issue 28's pre-registered selection rule (benchmarks/README.md) to validation ground-truth runs.

    python3 benchmarks/issue28_selection.py benchmarks/results/groundtruth_cpu_issue28_validation/step_*/groundtruth.json
    python3 benchmarks/issue28_selection.py --table benchmarks/results/groundtruth_cpu_issue28/groundtruth.json


Each file is one `evaluate groundtruth --plant-split validation` run at one fixed step; a candidate is (method, step).
Score = mean of the plants' top-R share, customisation-domain Recall@10, customisation Recall@10 and the share of
plant cases whose image-only control ranks its best copy in the top 10. The rule's LDS condition is not checked here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from unlearn_fast.evaluate.groundtruth import headline
from unlearn_fast.evaluate.metrics import format_mean_se

DEFAULT = ("abu", 7.5e-06)
MARGIN = 0.1


def candidate_rows(path: Path) -> dict[tuple[str, float], dict[str, float]]:
    record = json.loads(path.read_text())
    heads = headline(record)  # the numbers the run's own table shows
    plants = [s for s in record["scenarios"] if "memorisation" in s and not s["void"]]
    rows = {}
    for method in record["setup"]["methods"]:
        step = float(plants[0]["methods"][method]["options"]["alpha"])
        image_only = float(np.mean([s["methods"][method]["controls"]["image only"]["ranks"][0] <= 10
                                    for s in plants]))
        parts = {"top-R share": heads[method]["top_r_share"][0],
                 "customisation-domain R@10": heads[method]["customisation-domain recall"][0],
                 "customisation R@10": heads[method]["customisation recall"][0], "image-only ≤ 10": image_only}
        rows[(method, step)] = {**parts, "score": float(np.mean(list(parts.values())))}
    return rows


def main(paths: list[str]) -> None:
    rows: dict[tuple[str, float], dict[str, float]] = {}
    for path in paths:
        rows.update(candidate_rows(Path(path)))
    columns = ["top-R share", "customisation-domain R@10", "customisation R@10", "image-only ≤ 10", "score"]
    print("| method | step | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for (method, step), row in sorted(rows.items(), key=lambda item: -item[1]["score"]):
        print(f"| {method} | {step:.2g} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    default = rows[DEFAULT]
    eligible = {key: row for key, row in rows.items() if row["score"] > default["score"] + MARGIN
                and row["top-R share"] >= default["top-R share"]}
    if not eligible:
        print(f"\nNo candidate beats {DEFAULT[0]}@{DEFAULT[1]:.2g} (score {default['score']:.3f}) by more than "
              f"{MARGIN} without a lower top-R share: the default stays.")
        return
    (method, step), best = max(eligible.items(), key=lambda item: item[1]["score"])
    print(f"\nWinner (before the LDS condition): {method}@{step:.2g}, score {best['score']:.3f} against the default's "
          f"{default['score']:.3f}.")


def evaluation_table(paths: list[str]) -> None:
    """The issue-28 table of one or more evaluation runs from each run's headline: per method (and step), the plants'
    top-R share and control ranks (mean ± SE over cases) and Recall@10 in each customisation scenario."""
    rows, custom = {}, []
    for path in paths:
        record = json.loads(Path(path).read_text())
        heads = headline(record)
        custom = custom or [s["scenario"] for s in record["scenarios"] if s["scenario"].startswith("customisation")]
        plant = next(s for s in record["scenarios"] if "memorisation" in s)
        for method in record["setup"]["methods"]:
            step = plant["methods"][method]["options"].get("alpha")
            cells = [format_mean_se(*heads[method]["top_r_share"], 2),
                     format_mean_se(*heads[method]["image only rank"], 0),
                     format_mean_se(*heads[method]["caption only rank"], 0)]
            cells += [format_mean_se(*heads[method][f"{name} recall"], 2) for name in custom]
            rows[method if step is None else f"{method} @ {float(step):.2g}"] = cells
    print("| method | plants: top-R share | image only: best copy rank | caption only: best copy rank | "
          + " | ".join(f"{name.replace('customisation', 'c')} R@10" for name in custom) + " |")
    print("|---|" + "---:|" * (3 + len(custom)))
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        evaluation_table(sys.argv[2:])
    else:
        main(sys.argv[1:])
