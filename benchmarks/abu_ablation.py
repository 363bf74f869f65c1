"""The AbU ablation table (issue 13): every variant and baseline on every judge, from the committed result files.

    python3 benchmarks/abu_ablation.py --out benchmarks/results/abu_ablation.md

Columns (each from its own run; a variant a run did not include shows "–"):
    LDS validation  mean ± SE over the LDS run's validation queries: the column the default is chosen on
    LDS             mean ± SE over the 50 evaluation queries (results/lds_cpu_selection)
    planted top-R, Recall@10   same-domain planted duplicates, mean ± SE over the cases (results/groundtruth_cpu_domain*)
    custom. R@10 / mAP         customisation on a family of the data (same runs)
    paired ΔL − random         the counterfactual at K = 4 % (results/counterfactual_cpu_powered*)
    target / unrelated MSE     unlearning quality on the LDS run's full model (results/unlearning_quality_cpu_variants)
    s / query                  AbU's wall time per query in the LDS run (N = 400), validation excluded

Result files made while "abu" was the paper's recipe name it "abu": ALIASES maps it to "abu-paper" here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from unlearn_fast.evaluate.groundtruth import headline  # noqa: E402
from unlearn_fast.evaluate.metrics import format_mean_se  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
ALIASES = {"abu": "abu-paper"}
BASELINES = ("dtrak", "trak", "pixel", "random")


def _load(*parts):
    path = os.path.join(RESULTS, *parts)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _named(name: str) -> str:
    return ALIASES.get(name, name)


def collect() -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}

    def put(name, column, text):
        rows.setdefault(_named(name), {})[column] = text

    lds = _load("lds_cpu_selection", "results.json")
    if lds:
        for row in lds["table"]:
            if not row["method"].startswith("ceiling"):
                put(row["method"], "LDS", format_mean_se(row["all"]["mean"], row["all"]["se"], 3))
        for name, row in (lds.get("validation") or {}).get("table", {}).items():
            alpha = row["options"].get("alpha")
            put(name, "LDS validation", format_mean_se(row["mean"], row["se"], 3))
            if alpha is not None:
                put(name, "α", f"{alpha:g}")
        for name, seconds in lds.get("seconds_per_query", {}).items():
            if name.startswith("abu") and seconds > 0.5:  # ≈ 0: read from an earlier run's cache
                put(name, "s / query", f"{seconds:.1f}")
    for folder in ("groundtruth_cpu_domain", "groundtruth_cpu_domain_variants"):  # the later run wins
        summary = _load(folder, "groundtruth.json")
        for name, values in (headline(summary) if summary else {}).items():
            for column, key in (("planted top-R", "top_r_share"), ("planted R@10", "recall")):
                if key in values:
                    put(name, column, format_mean_se(*values[key], 2))
            if "customisation-domain recall" in values:
                put(name, "custom. R@10 / mAP", format_mean_se(*values["customisation-domain recall"], 2) + " / "
                    + format_mean_se(*values["customisation-domain ap"], 2))
    for folder in ("counterfactual_cpu_powered", "counterfactual_cpu_powered_variants"):
        summary = _load(folder, "results.json")
        for row in (summary or {}).get("paired", []):
            cell = row["delta_loss"]
            put(row["method"], "paired ΔL − random", format_mean_se(cell["mean"], cell["se"], 4))
    quality = _load("unlearning_quality_cpu_variants", "unlearning_quality.json")
    for entry in (quality or {}).get("table", []):
        name = entry["step"].split(" (")[0] if not entry["step"].startswith("α=") else "abu-paper"
        put(name, "target / unrelated MSE", format_mean_se(entry["mse_ratio"]["mean"], entry["mse_ratio"]["se"], 1))
    return rows


COLUMNS = ("α", "LDS validation", "LDS", "planted top-R", "planted R@10", "custom. R@10 / mAP", "paired ΔL − random",
           "target / unrelated MSE", "s / query")


def markdown(rows: dict[str, dict[str, str]]) -> str:
    order = sorted((n for n in rows if n.startswith("abu")), key=lambda n: (n != "abu", n != "abu-paper", n))
    order += [n for n in BASELINES if n in rows]
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name in order:
        lines.append(f"| {name} | " + " | ".join(rows[name].get(c, "–") for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the table here too")
    args = parser.parse_args()
    text = markdown(collect())
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
