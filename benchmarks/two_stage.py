"""Two-stage AbU against the exact query (issue 16): how much of the exact ranking the top C candidates keep, and
what a query costs, on queries the model generates from training captions.

    python3 benchmarks/two_stage.py table   --work WORK --out benchmarks/results/two_stage.json
    python3 benchmarks/two_stage.py product --rows 1000000 --dim 4096 --out benchmarks/results/two_stage_product.json

table: the default data set and model, the default AbU recipe (its work directory: shared noise). Queries are
generations from training captions, drawn by two seeded streams: VALIDATION (the default C is chosen on these
only) and EVALUATION (held out: the table reported). Per query: the exact AbU scores (every image rescored), AbU's
linearisation alone (abu-linear), and the two-stage scores (front --front) at each share in SHARES; against the exact ranking: top-10 and top-100
overlap and mAP@100 (AP of the ranking with the exact top 100 as the relevant set). Seconds per query: exact =
unlearn + rescoring every row; two-stage = stage 1's query (ĝ + product) + the same unlearning + rescoring the
candidates' rows; stage 1's features pass is a one-off per work directory, reported apart. Everything is resumable:
the artefacts live in WORK, and each finished query's numbers are in --out; exact and rescoring times are read back
from the query records, so a rerun over a finished WORK reports the times of the run that computed them.

product: stage 1's per-query cost at scale, the features given: a float16 memmap of ROWS × DIM random rows, then the
product of Q query vectors with it, for several Q (queries per second = Q / seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARES = ("1%", "5%", "10%", "25%")
VALIDATION_SEED, EVALUATION_SEED = 5150, 6160


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return len(set(a[:k].tolist()) & set(b[:k].tolist())) / k


def average_precision(order: np.ndarray, relevant: set, k: int) -> float:
    hits, total = 0, 0.0
    for position, index in enumerate(order[:k], 1):
        if int(index) in relevant:
            hits += 1
            total += hits / position
    return total / min(k, len(relevant))


def compare(scores: np.ndarray, exact: np.ndarray) -> dict:
    from unlearn_fast.ranking import ranking

    order, truth = ranking(scores), ranking(exact)
    return {"top10": overlap(order, truth, 10), "top100": overlap(order, truth, 100),
            "map100": average_precision(order, set(truth[:100].tolist()), 100)}


def held_out_queries(model, dataset, count: int, seed: int, avoid: set) -> list:
    """`count` generations from distinct training captions drawn with `seed` (none of `avoid`)."""
    from unlearn_fast.query import query_from_prompt

    captions = sorted({c for i in range(len(dataset)) for c in dataset.captions(i)} - avoid)
    chosen = np.random.default_rng(seed).choice(len(captions), count, replace=False)
    return [query_from_prompt(model, captions[k], seed=seed + n) for n, k in enumerate(chosen)]


def machine() -> dict:
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = " ".join(f for f in line.split(":")[1].split() if f.startswith(("avx", "amx", "fma")))
                break
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "flags": flags,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def cmd_table(args) -> None:
    from unlearn_fast.data import open_dataset
    from unlearn_fast.methods import build_method
    from unlearn_fast.methods.abu.method import attribute_by_unlearning
    from unlearn_fast.methods.abu.recipes import recipe_noise
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.workspace import PrepareSettings, Workspace
    import dataclasses

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"queries": {}}
    model, dataset = DiffusionModel.load("default"), open_dataset("default")
    base = PrepareSettings()
    settings = dataclasses.replace(base, scoring=dataclasses.replace(base.scoring, noise=recipe_noise("default")))
    workspace = Workspace(model, dataset, args.work, settings, progress=True)
    started = time.perf_counter()
    workspace.prepare()
    results.setdefault("prepare_s", round(time.perf_counter() - started, 1))
    front = build_method("abu-linear", dim=args.dim, flips=args.flips)
    abu = build_method("abu")
    started = time.perf_counter()
    front.row_features(workspace)
    results.setdefault("stage1_features_s", round(time.perf_counter() - started, 1))
    results.update(machine=machine(), num_train=len(dataset), caption_rows=int(len(workspace.caption_rows)),
                   dim=args.dim, flips=args.flips, front=args.front, shares=list(SHARES), unlearn=abu.settings(),
                   command=" ".join(sys.argv))
    out.write_text(json.dumps(results, indent=1))

    validation = held_out_queries(model, dataset, args.validation, VALIDATION_SEED, set())
    evaluation = held_out_queries(model, dataset, args.evaluation, EVALUATION_SEED, {q.prompt for q in validation})
    for split, queries in (("validation", validation), ("evaluation", evaluation)):
        for query in queries:
            if query.key in results["queries"]:
                continue
            row = {"split": split, "prompt": query.prompt, "seed": query.seed}
            exact_attr = attribute_by_unlearning(workspace, [query], abu.unlearn)
            exact = exact_attr.scores[0]
            timing = exact_attr.records[0]["timings_s"]
            row["exact_s"] = {"unlearn": timing["unlearn"], "rescore": timing["score"]}
            started = time.perf_counter()
            linear = front.score(workspace, [query])[0]  # timed uncached (a rerun reads every other artefact back)
            row["stage1_query_s"] = round(time.perf_counter() - started, 3)
            front.attribute(workspace, [query])  # cached for the two-stage fronts
            row["stage1"] = compare(linear, exact)
            row["front_extra_s"] = 0.0
            if args.front != "linear":  # the rest of the front (the linearisation above is cached by now)
                united = build_method("abu-two-stage", front=args.front, dim=args.dim, flips=args.flips).front
                started = time.perf_counter()
                row["front"] = compare(united.attribute(workspace, [query]).scores[0], exact)
                row["front_extra_s"] = round(time.perf_counter() - started, 3)
            for share in SHARES:
                method = build_method("abu-two-stage", candidates=share, front=args.front, dim=args.dim,
                                      flips=args.flips)
                attribution = method.attribute(workspace, [query])
                record = attribution.records[0]
                row[share] = {**compare(attribution.scores[0], exact), "candidates": record["two_stage"]["candidates"],
                              "rescore_s": record["timings_s"]["rescore"],
                              "bit_identical_at_candidates": bool(np.array_equal(
                                  attribution.scores[0][workspace.store.load_npy(record["two_stage"]["exact"])],
                                  exact[workspace.store.load_npy(record["two_stage"]["exact"])]))}
            results["queries"][query.key] = row
            out.write_text(json.dumps(results, indent=1))
            print(json.dumps({"query": query.prompt, **{k: row[k] for k in ("stage1", *SHARES)}}), flush=True)
    print(summary(results))


def summary(results: dict) -> str:
    """The markdown table per split: mean ± SE over queries."""
    lines = []
    for split in ("validation", "evaluation"):
        rows = [r for r in results["queries"].values() if r["split"] == split]
        if not rows:
            continue
        exact_s = np.array([r["exact_s"]["unlearn"] + r["exact_s"]["rescore"] for r in rows])
        lines += [f"\n{split}: {len(rows)} queries, N = {results['num_train']}, exact {exact_s.mean():.1f} s/query",
                  "| stage | C | top-10 overlap | top-100 overlap | mAP@100 | s / query | ratio to exact |",
                  "|---|---:|---:|---:|---:|---:|---:|"]

        def cell(values):
            values = np.asarray(values, float)
            se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
            return f"{values.mean():.2f} ± {se:.2f}"
        stage1_s = np.array([r["stage1_query_s"] for r in rows])
        if "front" in rows[0]:
            front_s = stage1_s + np.array([r["front_extra_s"] for r in rows])
            lines.append(f"| front alone ({results['front']}) | – | {cell([r['front']['top10'] for r in rows])} | "
                         f"{cell([r['front']['top100'] for r in rows])} | {cell([r['front']['map100'] for r in rows])} "
                         f"| {front_s.mean():.2f} | {(front_s / exact_s).mean():.3f}× |")
        lines.append(f"| linearisation alone | – | {cell([r['stage1']['top10'] for r in rows])} | "
                     f"{cell([r['stage1']['top100'] for r in rows])} | {cell([r['stage1']['map100'] for r in rows])} | "
                     f"{stage1_s.mean():.2f} | {(stage1_s / exact_s).mean():.3f}× |")
        for share in results["shares"]:
            seconds = np.array([r["stage1_query_s"] + r.get("front_extra_s", 0.0) + r["exact_s"]["unlearn"]
                                + r[share]["rescore_s"] for r in rows])
            lines.append(f"| two-stage | {share} ({rows[0][share]['candidates']}) | "
                         f"{cell([r[share]['top10'] for r in rows])} | {cell([r[share]['top100'] for r in rows])} | "
                         f"{cell([r[share]['map100'] for r in rows])} | {seconds.mean():.1f} | "
                         f"{(seconds / exact_s).mean():.2f}× |")
        lines.append(f"| exact | {results['num_train']} | 1 | 1 | 1 | {exact_s.mean():.1f} | 1× |")
    return "\n".join(lines)


def cmd_product(args) -> None:
    from unlearn_fast.methods.projector import feature_product

    path = Path(args.scratch) / f"features-{args.rows}x{args.dim}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        features = np.lib.format.open_memmap(str(path) + ".tmp", mode="w+", dtype=np.float16, shape=(args.rows, args.dim))
        rng = np.random.default_rng(0)
        for start in range(0, args.rows, 65536):
            stop = min(start + 65536, args.rows)
            features[start:stop] = rng.standard_normal((stop - start, args.dim), np.float32)
        features.flush()
        del features
        os.replace(str(path) + ".tmp", path)
    features = np.load(path, mmap_mode="r")
    feature_product(features, np.zeros((1, args.dim), np.float32))  # warm the page cache once
    rows = []
    for q in args.batch:
        vectors = np.random.default_rng(q).standard_normal((q, args.dim)).astype(np.float32)
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            feature_product(features, vectors)
            times.append(time.perf_counter() - started)
        best = min(times)
        rows.append({"queries": q, "seconds": round(best, 3), "queries_per_s": round(q / best, 2),
                     "gb_per_s": round(features.nbytes / best / 1e9, 2)})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "rows": args.rows, "dim": args.dim,
                                          "bytes": int(features.nbytes), "results": rows,
                                          "command": " ".join(sys.argv)}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    table = sub.add_parser("table")
    table.add_argument("--work", required=True)
    table.add_argument("--out", default="benchmarks/results/two_stage.json")
    table.add_argument("--validation", type=int, default=4)
    table.add_argument("--evaluation", type=int, default=8)
    table.add_argument("--dim", type=int, default=4096)
    table.add_argument("--flips", default="max", choices=("max", "mean"), help="stage 1's flips (methods/abu/linear.py)")
    table.add_argument("--front", default="linear+latent", help="the two-stage front (registry: linear, latent, "
                       "pixel, joined by +)")
    table.add_argument("--summary", action="store_true", help="print the tables of --out and stop")
    product = sub.add_parser("product")
    product.add_argument("--rows", type=int, default=1_000_000)
    product.add_argument("--dim", type=int, default=4096)
    product.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    product.add_argument("--repeat", type=int, default=3)
    product.add_argument("--scratch", default="/tmp/two_stage_product")
    product.add_argument("--out", default="benchmarks/results/two_stage_product.json")
    args = parser.parse_args()
    if args.what == "table" and args.summary:
        print(summary(json.loads(Path(args.out).read_text())))
    elif args.what == "table":
        cmd_table(args)
    else:
        cmd_product(args)


if __name__ == "__main__":
    main()
