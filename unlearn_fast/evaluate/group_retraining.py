"""Group attribution against leave-one-group-out retraining (GUDA's protocol, on groups of the training data).

    groups:     G families of near-duplicate images in the data: the images that share a caption up to their skin
                tone ("old woman", "old woman: light skin tone", …), half of them large families (≥ 12 members),
                half small ones (≈ 6), so that aggregation rules that grow with a group's size are put to the test
    split:      from each family, `queries_per_group` members are held out (their captions are the queries); the
                rest train, with `other_images` seeded images from outside every chosen family
    original:   train from scratch; the queries are its images for the held-out captions (seeded)
    retrain:    one model per family, trained from scratch without that family, same recipe and seed; and the full
                set with other seeds (the noise floor)
    truth:      ΔL_q(g) = L(ẑ_q; without g) − L(ẑ_q; original), on a fine timestep grid with the same noise
    judged:     per method and aggregation rule (groups.RULES), the families ranked by their members' aggregated
                scores against ΔL: Top-1 (the first family is the one whose removal raised the loss most) and
                NDCG@3 (gains: ΔL clipped at 0), mean ± SE over queries

Every stage is an artefact in the output folder: a rerun skips what is done (the retraining runs are shared with
training/retraining.py's cache).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data import open_dataset
from ..data.dataset import SubsetDataset
from ..data.export import export_imagefolder
from ..engine.step_rules import GRID_FACTORS
from ..errors import SettingsError
from ..groups import RULE, RULES, aggregate
from ..store import read_entries
from .counterfactual import QueryLosses, attribute_all, generate_queries, query_losses_under, training_request
from .metrics import format_mean_se, mean_and_se, ndcg_at_k, top1_group
from ..training.retraining import is_done, model_folder, run_jobs
from .output_files import write_json
from .setup_record import record_setup

LARGE_FAMILY = 12  # members from which a family counts as large


@dataclass
class GroupRetrainingSetup:
    """What is evaluated and how. groups: families removed one at a time. steps … warmup_steps: the training recipe
    shared by the original model and every retrain. methods: names for methods.build_method."""

    data: str = "default"
    base_model: str = "default"
    groups: int = 8
    queries_per_group: int = 1
    other_images: int = 300
    methods: tuple[str, ...] = ("abu", "dtrak", "pixel", "random")
    noise_seeds: tuple[int, ...] = (1,)
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 30
    seed: int = 0
    split_seed: int = 0
    query_seed: int = 1000
    query_steps: int = 50
    guidance: float = 3.0
    loss_timesteps: int = 50
    encoder: str | None = None
    method_options: dict = field(default_factory=dict)
    abu_step_factors: tuple[float, ...] = GRID_FACTORS  # AbU's step validated at its value × these
    validation_prompts: int = 4
    device: str = "cpu"

    def __post_init__(self):
        if self.groups < 2 or self.queries_per_group < 1 or self.other_images < 0:
            raise SettingsError(f"groups must be ≥ 2, queries_per_group ≥ 1 and other_images ≥ 0, got {self.groups}, "
                                f"{self.queries_per_group}, {self.other_images}")


def family_of(caption: str) -> str:
    """The caption without its skin-tone modifier: "old woman: light skin tone" → "old woman" (a caption without
    one is its own family name)."""
    head, colon, tail = caption.partition(": ")
    return head if colon and "skin tone" in tail else caption


def families(captions: list[str]) -> dict[str, list[int]]:
    """{family: indices} for every family of at least two images."""
    members: dict[str, list[int]] = {}
    for index, caption in enumerate(captions):
        members.setdefault(family_of(caption), []).append(index)
    return {name: rows for name, rows in members.items() if len(rows) >= 2}


def split_groups(setup: GroupRetrainingSetup, out_dir: str) -> dict:
    """The training folder (exported once), each group's training rows and its held-out query prompts."""
    record_path = os.path.join(out_dir, "split.json")
    if os.path.isfile(record_path):
        return read_entries(record_path)
    full = open_dataset(setup.data)
    captions = [full.captions(i)[0] for i in range(len(full))]
    eligible = {name: rows for name, rows in families(captions).items()
                if len(rows) >= setup.queries_per_group + 3}
    rng = np.random.default_rng([setup.split_seed, 4099])
    large = sorted(name for name, rows in eligible.items() if len(rows) >= LARGE_FAMILY)
    small = sorted(name for name, rows in eligible.items() if len(rows) < LARGE_FAMILY)
    want_large = min(len(large), setup.groups // 2)
    if want_large + len(small) < setup.groups:
        raise SettingsError(f"{setup.data}: only {len(eligible)} families of ≥ {setup.queries_per_group + 3} images "
                            f"that differ by skin tone; ask for fewer groups")
    chosen = (list(rng.choice(large, want_large, replace=False)) if want_large else []) + \
        list(rng.choice(small, setup.groups - want_large, replace=False))
    held_out, grouped = {}, {}
    for name in chosen:
        rows = np.array(eligible[name])
        out = set(rng.choice(rows, setup.queries_per_group, replace=False).tolist())
        held_out[name] = sorted(out)
        grouped[name] = sorted(set(rows.tolist()) - out)
    in_families = {i for rows in eligible.values() for i in rows} | {i for rows in held_out.values() for i in rows}
    outside = np.array([i for i in range(len(full)) if i not in in_families])
    if len(outside) < setup.other_images:
        raise SettingsError(f"{setup.data}: only {len(outside)} images outside the families; ask for fewer "
                            f"other_images")
    others = rng.choice(outside, setup.other_images, replace=False).tolist()
    train = sorted({i for rows in grouped.values() for i in rows} | set(others))
    position = {index: row for row, index in enumerate(train)}
    folder = os.path.join(out_dir, "data")
    export_imagefolder(SubsetDataset(full, np.array(train)), folder)
    record = {"data": setup.data, "folder": folder, "train_indices": train,
              "groups": {name: [position[i] for i in grouped[name]] for name in chosen},
              "queries": [{"prompt": captions[i], "group": name, "index": int(i)}
                          for name in chosen for i in held_out[name]]}
    write_json(record_path, record)
    return record


def group_scores(scores: np.ndarray, group_rows: list[list[int]], rule: str) -> np.ndarray:
    """(Q, G): each query's score of each group under the aggregation rule."""
    return np.array([[aggregate(row[rows], rule) for rows in group_rows] for row in scores])


def judge(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Top-1 and NDCG@3 of each query's group order, mean ± SE over queries (NDCG over queries with a rise)."""
    top1 = [top1_group(p, t) for p, t in zip(predicted, truth)]
    ndcg = np.array([ndcg_at_k(p, t, 3) for p, t in zip(predicted, truth)])
    return {"top1": dict(zip(("mean", "se"), mean_and_se(top1))),
            "ndcg3": dict(zip(("mean", "se"), mean_and_se(ndcg[np.isfinite(ndcg)]))), "per_query_top1": top1}


def run_group_retraining(setup: GroupRetrainingSetup, out_dir: str, workers: int = 1, threads: int = 1) -> dict:
    """The whole evaluation (resumable); returns the summary also written to out_dir/results.json."""
    from ..models.adapter import DiffusionModel

    os.makedirs(out_dir, exist_ok=True)
    record_setup(setup, out_dir, free=("methods", "method_options", "encoder", "noise_seeds"))
    split = split_groups(setup, out_dir)
    dataset = open_dataset(split["folder"])
    names = list(split["groups"])
    group_rows = [split["groups"][name] for name in names]
    runs = os.path.join(out_dir, "retrains")
    original = training_request(setup, split["folder"])
    run_jobs(runs, [original], workers=1, threads=max(1, workers * threads))
    model = DiffusionModel.load(model_folder(runs, original), device=setup.device)
    queries = generate_queries(setup, model, [q["prompt"] for q in split["queries"]], out_dir)
    seconds: dict = {}
    scores = attribute_all(setup, model, dataset, queries, out_dir, seconds)

    removals = [training_request(setup, split["folder"], rows) for rows in group_rows]
    noise = [training_request(setup, split["folder"], seed=s) for s in setup.noise_seeds]
    run_jobs(runs, removals + noise, workers=workers, threads=threads)
    if not all(is_done(runs, r) for r in removals + noise):
        raise RuntimeError("some retraining runs are still being trained by another process: run again later")
    query_losses = QueryLosses(setup, queries)
    every = list(range(len(queries)))

    def losses(request) -> np.ndarray:
        measured = query_losses_under(model_folder(runs, request), queries, every, query_losses, setup)
        return np.array([measured[q] for q in every])

    base = losses(original)
    truth = np.stack([losses(r) - base for r in removals], axis=1)  # (Q, G)
    floor = np.stack([np.abs(losses(r) - base) for r in noise], axis=1).mean(axis=1) if noise else None
    own = np.array([names.index(q["group"]) for q in split["queries"]])
    by_construction = judge(np.eye(len(names))[own], truth)  # already per group: every rule gives this
    table = {"by construction (the query's own family)": {rule: by_construction for rule in RULES}}
    for name, method_scores in scores.items():
        table[name] = {rule: judge(group_scores(method_scores, group_rows, rule), truth) for rule in RULES}
    summary = {"setup": json.loads(json.dumps(asdict(setup))), "num_train": len(dataset),
               "groups": [{"name": name, "size": len(rows)} for name, rows in zip(names, group_rows)],
               "queries": split["queries"], "delta_loss": truth.tolist(),
               "noise_floor": None if floor is None else floor.tolist(),
               "truth_is_own_family": float(np.mean(truth.argmax(axis=1) == own)),
               "table": table, "rule": RULE, "seconds_per_query": seconds}
    write_json(os.path.join(out_dir, "results.json"), summary)
    return summary


def markdown_table(summary: dict) -> str:
    rules = list(RULES)
    header = ("| method | " + " | ".join(f"Top-1 {r}" for r in rules) + " | "
              + " | ".join(f"NDCG@3 {r}" for r in rules) + " |")
    lines = [header, "|---|" + "---:|" * (2 * len(rules))]
    for name, by_rule in summary["table"].items():
        cells = [format_mean_se(by_rule[r]["top1"]["mean"], by_rule[r]["top1"]["se"], 2) for r in rules]
        cells += [format_mean_se(by_rule[r]["ndcg3"]["mean"], by_rule[r]["ndcg3"]["se"], 2) for r in rules]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    truth = np.array(summary["delta_loss"])
    sizes = ", ".join(f"{g['name']} ({g['size']})" for g in summary["groups"])
    notes = [f"- groups (training members): {sizes}",
             f"- the family whose removal raised a query's loss most is the query's own family for "
             f"{summary['truth_is_own_family']:.2f} of the {len(truth)} queries; largest ΔL per query "
             f"{format_mean_se(*mean_and_se(truth.max(axis=1)), 5)}"
             + ("" if summary["noise_floor"] is None else
                f", |ΔL| under another training seed {format_mean_se(*mean_and_se(summary['noise_floor']), 5)}"),
             f"- `--group-by` uses the rule `{summary['rule']}`"]
    return "\n".join(notes) + "\n\n" + "\n".join(lines) + "\n"
