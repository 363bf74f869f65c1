"""What `evaluate counterfactual` writes from its summary: a markdown table, plots of ΔL and ΔG against K, and
original-vs-retrained images for a few queries."""
from __future__ import annotations

import importlib.util
import logging
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from .metrics import format_mean_se
from .output_files import write_text

logger = logging.getLogger(__name__)

METRIC_LABELS = {"delta_loss": "ΔL (loss of ẑ, retrained − original)", "delta_mse": "ΔG (pixel MSE)",
                 "delta_feature": "ΔG (1 − encoder cosine)"}


def _cell(value: dict) -> str:
    return format_mean_se(value["mean"], value["se"])


def markdown_table(summary: dict) -> str:
    metrics = [m for m in METRIC_LABELS if any(m in row for row in summary["table"])]
    lines = ["| method | K (share) | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for row in summary["table"]:
        size = "full set, other seed" if row["method"] == "noise floor" else f"{row['k']} ({row['fraction']:.1%})"
        lines.append(f"| {row['method']} | {size} | " + " | ".join(_cell(row[m]) for m in metrics) + " |")
    return "\n".join(lines)


def paired_table(summary: dict) -> str:
    """The paired differences against random removal on the same query (summary["paired"])."""
    paired = summary.get("paired") or []
    metrics = [m for m in METRIC_LABELS if any(m in row for row in paired)]
    if not paired:
        return ""
    lines = ["| method | K | queries | " + " | ".join(f"{METRIC_LABELS[m]}: method − random, paired" for m in metrics)
             + " |", "|---|---|---:|" + "---|" * len(metrics)]
    for row in paired:
        n = row[metrics[0]]["n"]
        lines.append(f"| {row['method']} | {row['k']} | {n} | " + " | ".join(_cell(row[m]) for m in metrics) + " |")
    return "\n".join(lines)


def specificity_table(summary: dict) -> str:
    lines = ["| method | K | queries | specificity (ΔL) |", "|---|---:|---:|---:|"]
    for row in summary["specificity"]:
        value = row["specificity"]
        lines.append(f"| {row['method']} | {row['k']} | {value['n']} | {_cell(value)} |")
    return "\n".join(lines)


def plot_against_k(summary: dict, metric: str, path: str) -> str:
    """Mean ± SE of `metric` against K for every method, the noise floor as a shaded band around 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    methods = [m for m in dict.fromkeys(r["method"] for r in summary["table"]) if m != "noise floor"]
    for method in methods:
        rows = sorted((r for r in summary["table"] if r["method"] == method and metric in r), key=lambda r: r["k"])
        if rows:
            ax.errorbar([100 * r["fraction"] for r in rows], [r[metric]["mean"] for r in rows],
                        yerr=[0 if math.isnan(r[metric]["se"]) else r[metric]["se"] for r in rows], marker="o",
                        capsize=3, label=method)
    floor = [r for r in summary["table"] if r["method"] == "noise floor" and metric in r]
    if floor and metric == "delta_loss":
        spread = abs(floor[0][metric]["mean"]) + (0 if math.isnan(floor[0][metric]["se"]) else floor[0][metric]["se"])
        ax.axhspan(-spread, spread, color="grey", alpha=0.2, label="noise floor (other seed)")
    elif floor:
        ax.axhline(floor[0][metric]["mean"], color="grey", linestyle="--", label="noise floor (other seed)")
    ax.set_xlabel("K (% of the training set removed)")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def image_grid(summary: dict, out_dir: str, path: str, max_queries: int = 3, cell: int = 64) -> str:
    """Rows: queries. Columns: the original image, then each method's retrained image at the largest K (random:
    its first draw), then the first noise-floor model's."""
    rows = summary["rows"]
    k = max(r["k"] for r in rows)
    columns = [m for m in dict.fromkeys(r["method"] for r in rows)]
    queries = summary["queries"][:max_queries]
    label_h = 14
    sheet = Image.new("RGB", (cell * (len(columns) + 1), label_h + cell * len(queries)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(["original", *columns]):
        draw.text((c * cell + 2, 1), name[:10], fill="black")
    for q, _ in enumerate(queries):
        images = [Image.open(os.path.join(out_dir, "queries", f"q{q}.png"))]
        for method in columns:
            # the largest K's run (noise floor: K = 0), its first random draw or noise seed
            match = sorted((r for r in rows if r["method"] == method and r["query"] == q
                            and r["k"] == (0 if method == "noise floor" else k)), key=lambda r: r["draw"])
            images.append(Image.open(os.path.join(out_dir, "retrains", match[0]["run"], match[0]["image"]))
                          if match else Image.new("RGB", (cell, cell), "lightgrey"))
        for c, image in enumerate(images):
            sheet.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (c * cell, label_h + q * cell))
    sheet.save(path)
    return path


def write_report(summary: dict, out_dir: str, results_dir: str | None = None, header: str = "") -> dict[str, str]:
    """results.md + plots + image grid in results_dir (default: out_dir)."""
    results_dir = results_dir or out_dir
    os.makedirs(results_dir, exist_ok=True)
    paths = {}
    metrics = [metric for metric in METRIC_LABELS if any(metric in r for r in summary["table"])]
    if metrics and importlib.util.find_spec("matplotlib") is None:  # an optional dependency: the table says it all
        logger.warning("counterfactual: the plots of %s against K are skipped: matplotlib is not installed "
                       "(pip install 'unlearn_fast[plots]'); results.md holds every number", ", ".join(metrics))
        metrics = []
    for metric in metrics:
        paths[metric] = plot_against_k(summary, metric, os.path.join(results_dir, f"{metric}.png"))
    paths["images"] = image_grid(summary, out_dir, os.path.join(results_dir, "images.png"))
    text = header + "\n" + markdown_table(summary) + "\n"
    if summary.get("paired"):
        text += "\nPaired against random removal on the same query (mean ± SE over queries):\n\n" + paired_table(summary) + "\n"
    if summary.get("specificity"):
        text += ("\nCounterfactual specificity, ΔL_A(A's top K removed) − ΔL_A(another query's top K removed), mean "
                 "over the other queries, then mean ± SE over queries A (0: the removal is the same whatever the "
                 "query):\n\n" + specificity_table(summary) + "\n")
    paths["table"] = os.path.join(results_dir, "results.md")
    write_text(paths["table"], text)
    return paths


def winner_lines(summary: dict, method: str = "abu") -> list[str]:
    """For each K: `method`'s mean ΔL against random removal (difference in SEs), the best method, the noise floor."""
    lines = []
    table = summary["table"]
    floor = next((r["delta_loss"]["mean"] for r in table if r["method"] == "noise floor"), float("nan"))
    for k in sorted({r["k"] for r in table if r["method"] != "noise floor"}):
        at_k = {r["method"]: r["delta_loss"] for r in table if r["k"] == k and r["method"] != "noise floor"}
        best = max(at_k, key=lambda m: at_k[m]["mean"])
        line = f"K = {k}: best ΔL {best} {at_k[best]['mean']:.4f}"
        if method in at_k and "random" in at_k:
            ours, random = at_k[method], at_k["random"]
            se = np.hypot(np.nan_to_num(ours["se"]), np.nan_to_num(random["se"]))
            line += (f"; {method} {ours['mean']:.4f} vs random {random['mean']:.4f} "
                     f"({(ours['mean'] - random['mean']) / se if se else float('nan'):+.1f} SE)")
        lines.append(line + f"; noise floor ΔL {floor:.4f}")
    return lines
