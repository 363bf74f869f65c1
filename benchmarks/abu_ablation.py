"""The AbU ablation table (issue 13): every variant and baseline on every judge, from the committed result files.

    python3 benchmarks/abu_ablation.py --out benchmarks/results/abu_ablation.md

Columns (each from its own run; a variant a run did not include shows "–"):
    LDS validation  mean ± SE over the LDS run's validation queries: the column the default is chosen on
    LDS             mean ± SE over the 50 evaluation queries (results/lds_cpu_selection)
    planted top-R, Recall@10   same-domain planted duplicates, mean ± SE over the cases (results/groundtruth_cpu_domain*)
    custom. R@10 / mAP         customisation on a family of the data (same runs)
    paired ΔL − random         the counterfactual at K = 4 % (results/counterfactual_cpu_powered*)
    target / unrelated MSE     unlearning quality on the LDS run's full model (results/unlearning_quality_cpu_variants)
    s / query                  AbU's unlearn + rescore seconds per query in the LDS run (N = 400; results/lds_cpu_selection/seconds.json)

Runs made before the LDS validation (issue 12) ran the paper's recipe as "abu" with α chosen by MRR on training
captions; the counterfactual's "abu-paper" reused that α. Those are the row "abu-paper (α by MRR)" (MRR_ROWS).
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
MRR = "abu-paper (α by MRR)"
MRR_ROWS = {"lds_cpu": {"abu": MRR}, "groundtruth_cpu_domain": {"abu": MRR},
            "counterfactual_cpu_powered": {"abu": MRR}, "counterfactual_cpu_powered_variants": {"abu-paper": MRR}}
BASELINES = ("dtrak", "trak", "pixel", "random")


def _load(*parts):
    path = os.path.join(RESULTS, *parts)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def collect() -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}

    def put(name, column, text, folder=""):
        rows.setdefault(MRR_ROWS.get(folder, {}).get(name, name), {})[column] = text

    earlier = _load("lds_cpu", "results.json")
    for row in (earlier or {}).get("table", []):
        if row["method"] == "abu":
            put("abu", "LDS", format_mean_se(row["all"]["mean"], row["all"]["se"], 3), "lds_cpu")
            put("abu", "α", "0.01 (counterfactual 0.03)", "lds_cpu")
    variants = _load("lds_cpu_variants", "results.json")  # variants not validated again by LDS (cost)
    for row in (variants or {}).get("table", []):
        if row["method"] in ("abu-calibrated", "abu-ekfac"):
            name = f"{row['method']} (α by MRR)"
            put(name, "LDS", format_mean_se(row["all"]["mean"], row["all"]["se"], 3))
            put(name, "α", {"abu-calibrated": "0.01", "abu-ekfac": "1 (rise)"}[row["method"]])  # its validation.json
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
    timings = _load("lds_cpu_selection", "seconds.json")  # from the run's log: its results were read from caches
    for name, seconds in (timings or {}).get("seconds_per_query", {}).items():
        put(name, "s / query", f"{seconds:.1f}")
    for folder in ("groundtruth_cpu_domain", "groundtruth_cpu_domain_variants"):  # the later run wins
        summary = _load(folder, "groundtruth.json")
        for name, values in (headline(summary) if summary else {}).items():
            for column, key in (("planted top-R", "top_r_share"), ("planted R@10", "recall")):
                if key in values:
                    put(name, column, format_mean_se(*values[key], 2), folder)
            if "customisation-domain recall" in values:
                put(name, "custom. R@10 / mAP", format_mean_se(*values["customisation-domain recall"], 2) + " / "
                    + format_mean_se(*values["customisation-domain ap"], 2), folder)
    for folder in ("counterfactual_cpu_powered", "counterfactual_cpu_powered_variants"):
        summary = _load(folder, "results.json")
        for row in (summary or {}).get("paired", []):
            cell = row["delta_loss"]
            put(row["method"], "paired ΔL − random", format_mean_se(cell["mean"], cell["se"], 4), folder)
    quality = _load("unlearning_quality_cpu_variants", "unlearning_quality.json")
    for entry in (quality or {}).get("table", []):
        ratio = format_mean_se(entry["mse_ratio"]["mean"], entry["mse_ratio"]["se"], 1)
        if not entry["step"].startswith("α="):
            put(entry["step"].split(" (")[0], "target / unrelated MSE", ratio)
            continue
        # The paper's step at this α is also the step of every variant that changes only the score or the noise.
        for name, row in rows.items():
            if _paper_step(name) and row.get("α") == f"{entry['alpha']:g}" and "target / unrelated MSE" not in row:
                row["target / unrelated MSE"] = ratio
    return rows


def _paper_step(name: str) -> bool:
    from unlearn_fast.methods.abu.recipes import VARIANTS

    settings = VARIANTS.get(name)
    return settings is not None and not set(settings) - {"score", "references", "spread", "noise"}


COLUMNS = ("α", "LDS validation", "LDS", "planted top-R", "planted R@10", "custom. R@10 / mAP", "paired ΔL − random",
           "target / unrelated MSE", "s / query")


def markdown(rows: dict[str, dict[str, str]]) -> str:
    order = sorted((n for n in rows if n.startswith("abu")), key=lambda n: (n != "abu-shared-noise", n))
    order += [n for n in BASELINES if n in rows]
    lines = ["AbU variants and baselines on every judge (cpu profile; `python3 benchmarks/abu_ablation.py`; columns and "
             "sources in its docstring; discussed in benchmarks/README.md). –: not run (each costs 15–45 min here).",
             "", "| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
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
