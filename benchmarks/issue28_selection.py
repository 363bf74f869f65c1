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

DEFAULT = ("abu", 7.5e-06)
MARGIN = 0.1


def candidate_rows(path: Path) -> dict[tuple[str, float], dict[str, float]]:
    record = json.loads(path.read_text())
    plants = [s for s in record["scenarios"] if not s["scenario"].startswith("customisation") and not s.get("void")]
    custom = {s["scenario"]: s for s in record["scenarios"] if s["scenario"].startswith("customisation")
              and s.get("style", "full") == "full" and not s.get("with_base", False)}
    rows = {}
    for method in record["setup"]["methods"]:
        step = float(plants[0]["methods"][method]["options"]["alpha"])
        share = float(np.mean([s["methods"][method]["top_r_share"]["mean"] for s in plants]))
        image_only = float(np.mean([min(s["methods"][method]["controls"]["image only"]["ranks"]) <= 10
                                    for s in plants]))
        domain = custom["customisation-domain"]["methods"][method]["recall"]["mean"]
        synthetic = custom["customisation"]["methods"][method]["recall"]["mean"]
        parts = {"top-R share": share, "customisation-domain R@10": domain, "customisation R@10": synthetic,
                 "image-only ≤ 10": image_only}
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
    """The issue-28 table of one or more evaluation runs: per method, the plants' top-R share and control ranks
    (mean ± SE over cases), and Recall@10 in each customisation scenario (mean ± SE over its queries)."""
    def cell(values, digits: int = 2) -> str:
        values = np.asarray(values, np.float64)
        se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        return f"{values.mean():.{digits}f} ± {se:.{digits}f}" if np.isfinite(se) else f"{values.mean():.{digits}f}"

    rows, custom_names = {}, []
    for path in paths:
        record = json.loads(Path(path).read_text())
        plants = [s for s in record["scenarios"] if not s["scenario"].startswith("customisation") and not s.get("void")]
        custom = [s for s in record["scenarios"] if s["scenario"].startswith("customisation")]
        custom_names = custom_names or [s["scenario"].replace("customisation", "c") for s in custom]
        for method in record["setup"]["methods"]:
            step = plants[0]["methods"][method]["options"].get("alpha")
            label = method if step is None else f"{method} @ {float(step):.2g}"
            row = [cell([s["methods"][method]["top_r_share"]["mean"] for s in plants]),
                   cell([min(s["methods"][method]["controls"]["image only"]["ranks"]) for s in plants], 0),
                   cell([min(s["methods"][method]["controls"]["caption only"]["ranks"]) for s in plants], 0)]
            row += [f"{s['methods'][method]['recall']['mean']:.2f} ± {s['methods'][method]['recall']['se']:.2f}"
                    for s in custom]
            rows[label] = row
    print("| method | plants: top-R share | image only: best copy rank | caption only: best copy rank | "
          + " | ".join(f"{name} R@10" for name in custom_names) + " |")
    print("|---|" + "---:|" * (3 + len(custom_names)))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        evaluation_table(sys.argv[2:])
    else:
        main(sys.argv[1:])
