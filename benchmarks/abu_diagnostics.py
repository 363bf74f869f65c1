"""What dominates a method's top ranks? Reads an `unlearn-fast evaluate lds` folder (its stored scores) and reports,
per method, over the evaluation queries:

    loss corr.   mean Spearman between an image's score and its own loss under the model (L_before): a method that
                 ranks images whose loss is high anyway follows the image, not the query
    shared part  mean Pearson between a query's scores and the mean score over the OTHER queries: 1 means the ranking
                 is the same whatever the query
    top-10 hubs  the share of all top-10 places taken by the 10 images that appear most often in them (0.1 × queries
                 places in all; 1.0: every query gets the same ten)

    python3 benchmarks/abu_diagnostics.py /work/lds_cpu/run [--methods abu abu-normalised ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def diagnose(scores: np.ndarray, base_loss: np.ndarray, k: int = 10) -> dict:
    q = len(scores)
    loss_corr = [spearman(row, base_loss) for row in scores]
    total = scores.sum(axis=0)
    shared = [float(np.corrcoef(row, (total - row) / (q - 1))[0, 1]) for row in scores] if q > 1 else [np.nan]
    tops = np.argsort(-scores, axis=1)[:, :k]
    counts = np.bincount(tops.ravel(), minlength=scores.shape[1])
    hubs = np.argsort(-counts)[:k]
    return {"loss_corr": float(np.mean(loss_corr)), "loss_corr_se": float(np.std(loss_corr, ddof=1) / np.sqrt(q)),
            "shared": float(np.mean(shared)), "hub_share": float(counts[hubs].sum() / tops.size),
            "hubs": hubs.tolist(), "hub_counts": counts[hubs].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="an `unlearn-fast evaluate lds --out` folder")
    parser.add_argument("--methods", nargs="+", help="default: every method with stored scores")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()
    attributions = os.path.join(args.folder, "attributions")
    methods = args.methods or sorted(os.listdir(attributions))
    base = np.load(os.path.join(args.folder, "work", "losses_base", "data.npy"), mmap_mode="r")
    rows = np.load(os.path.join(args.folder, "work", "caption_rows.npy"))
    per_row = np.asarray(base, np.float64).mean(axis=(1, 2))
    base_loss = np.bincount(rows, per_row) / np.bincount(rows)
    with open(os.path.join(args.folder, "data", "metadata.jsonl"), encoding="utf-8") as handle:
        captions = [json.loads(line).get("text") for line in handle]
    results = {}
    print("| method | loss corr. (Spearman with L_before) | shared part (corr. with other queries' mean) | "
          "top-10 hub share | the three most frequent top-10 images |")
    print("|---|---:|---:|---:|---|")
    for name in methods:
        path = os.path.join(attributions, name, "scores.npy")
        if not os.path.isfile(path):
            continue
        result = diagnose(np.load(path), base_loss)
        results[name] = result
        hubs = "; ".join(f"{captions[i]} ({c})" for i, c in zip(result["hubs"][:3], result["hub_counts"][:3]))
        print(f"| {name} | {result['loss_corr']:+.3f} ± {result['loss_corr_se']:.3f} | {result['shared']:+.3f} | "
              f"{result['hub_share']:.2f} | {hubs} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
