"""The linear datamodeling score (LDS; TRAK, D-TRAK), METHOD.md "How attribution is judged" §3.

    split:     a seeded subset of N training images; the queries are images the full model generates from held-out
               prompts AND held-out real images with their own captions (D-TRAK's "generated" and "validation" sets)
    full:      the model trained from scratch on all N: it generates the queries, and every method attributes with it
    subsets:   M seeded random subsets S_m (a share α = 0.5 of the N rows), each trained from scratch with the same
               recipe and seed (the replay: the full run's order and per-row draws minus the removed rows); trained
               ONCE as retraining artefacts (training/retraining.py: resumable, lock-protected, several workers) and shared
               by every method and every query
    output:    f_m(q) = L(ẑ_q; model m) on a fixed timestep grid with fixed noise (counterfactual.QueryLosses)
    score:     g_m(q) = Σ_{z ∈ S_m} τ_q(z); LDS(q) = Spearman over m of (g_m(q), −f_m(q)): a method predicts well
               when the subsets it says help the query most give it the lowest loss. Reported as mean ± SE over
               queries per method, for each query kind and for all.
    ceiling:   the first `ceiling_subsets` subsets are trained again with another seed; Spearman over those subsets of
               (−f_m(seed a), −f_m(seed b)) per query says how much of f any function of S_m can predict.

Every stage is an artefact in the output folder, so a killed run resumes, and a second method adds no training run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data import load_pixels, open_dataset
from ..data.dataset import SubsetDataset
from ..data.export import export_imagefolder
from ..engine.step_rules import GRID_FACTORS
from ..errors import SettingsError
from ..models.text_encoder import split_words
from ..store import add_entries, read_entries
from .counterfactual import QueryLosses, attribute_all, generate_queries, training_request
from .metrics import (centred_linear_datamodeling_scores, hub_correlation, hub_share, linear_datamodeling_scores,
                      mean_and_se, spearman)
from ..training.retraining import is_done, job_key, model_folder, run_jobs
from .output_files import write_json
from .setup_record import record_setup
from .validation import Validation

KINDS = ("generated", "held-out")


@dataclass
class LDSSetup:
    """What is measured and how. subsets: M. subset_fraction: α, the share of the N rows each subset keeps.
    ceiling_subsets: how many of the subsets are trained with a second seed. generated_queries / heldout_queries:
    queries of each kind. validation_queries: more queries of both kinds (half generated), split off after the
    evaluation ones and never evaluated on. selection: what chooses AbU's α ("mrr": training captions,
    evaluate.validation; "lds": the LDS of the validation queries). steps … warmup_steps, seed: the training recipe of the full model and every subset model."""

    data: str = "default"
    base_model: str = "default"
    train_images: int | None = 400
    subsets: int = 64
    subset_fraction: float = 0.5
    ceiling_subsets: int = 8
    generated_queries: int = 25
    heldout_queries: int = 25
    validation_queries: int = 0
    selection: str = "mrr"
    methods: tuple[str, ...] = ("abu", "dtrak", "trak", "pixel", "random")
    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    seed: int = 0
    split_seed: int = 0
    query_seed: int = 2000
    query_steps: int = 50
    guidance: float = 3.0
    loss_timesteps: int = 50
    encoder: str | None = None
    method_options: dict = field(default_factory=dict)
    abu_step_factors: tuple[float, ...] = GRID_FACTORS  # AbU's step validated at its value × these
    validation_prompts: int = 4
    device: str = "cpu"

    def __post_init__(self):
        if self.subsets < 3:
            raise SettingsError(f"subsets must be at least 3 for a rank correlation, got {self.subsets}")
        if not 0 < self.subset_fraction < 1:
            raise SettingsError(f"subset_fraction must be in (0, 1), got {self.subset_fraction}")
        if not 0 <= self.ceiling_subsets <= self.subsets or self.ceiling_subsets in (1, 2):
            raise SettingsError(f"ceiling_subsets must be 0 or in [3, subsets], got {self.ceiling_subsets}")
        if self.generated_queries + self.heldout_queries < 1:
            raise SettingsError("LDS needs at least one query")
        if self.selection not in ("mrr", "lds"):
            raise SettingsError(f"selection must be 'mrr' or 'lds', got {self.selection!r}")
        if self.selection == "lds" and self.validation_queries < 2:
            raise SettingsError("selection 'lds' needs at least 2 validation_queries")


# ------------------------------------------------------------------------------------------------------- split
def subset_rows(setup: LDSSetup, num_train: int, m: int) -> np.ndarray:
    """The rows subset model m trains on: a seeded random share of the N rows, sorted."""
    keep = max(1, round(setup.subset_fraction * num_train))
    return np.sort(np.random.default_rng([setup.split_seed, 15485863, m]).permutation(num_train)[:keep])


def subset_masks(setup: LDSSetup, num_train: int) -> np.ndarray:
    masks = np.zeros((setup.subsets, num_train), bool)
    for m in range(setup.subsets):
        masks[m, subset_rows(setup, num_train, m)] = True
    return masks


@dataclass
class Split:
    """The training folder and the query captions of an LDS run: held-out prompts the full model generates from,
    held-out real images ({index in the full data, prompt}), and the same two kinds again for validation."""

    folder: str
    generated: list[str]
    heldout: list[dict]
    validation_generated: list[str]
    validation_heldout: list[dict]


def split_data(setup: LDSSetup, out_dir: str) -> Split:
    """The seeded training subset (exported once) and the held-out queries of every kind. Every query caption uses
    only words of the training captions and equals none of them (nor another query's). The validation queries are
    the next eligible ones after the evaluation queries, so asking for them later changes nothing already there."""
    folder, record_path = os.path.join(out_dir, "data"), os.path.join(out_dir, "split.json")
    record = read_entries(record_path)
    evaluation = setup.generated_queries + setup.heldout_queries
    generated_validation = (setup.validation_queries + 1) // 2
    if len(record.get("validation_prompts", [])) + len(record.get("validation_images", [])) \
            < setup.validation_queries or not record:
        full = open_dataset(setup.data)
        order = np.random.default_rng(setup.split_seed).permutation(len(full))
        if record:
            train = np.array(record["train_indices"])
        else:
            spare = len(full) - evaluation - setup.validation_queries
            train = np.sort(order[:spare if setup.train_images is None else min(setup.train_images, spare)])
        eligible = _eligible_queries(full, train, order, evaluation + setup.validation_queries)
        record.update(data=setup.data, train_indices=train.tolist(),
                      generated_prompts=record.get("generated_prompts",
                                                   [p for _, p in eligible[:setup.generated_queries]]),
                      heldout_images=record.get("heldout_images", [{"index": i, "prompt": p}
                                                                   for i, p in eligible[setup.generated_queries:
                                                                                        evaluation]]),
                      validation_prompts=[p for _, p in eligible[evaluation:evaluation + generated_validation]],
                      validation_images=[{"index": i, "prompt": p}
                                         for i, p in eligible[evaluation + generated_validation:]])
        if not os.path.isfile(os.path.join(folder, "metadata.jsonl")):
            export_imagefolder(SubsetDataset(full, train), folder)
        write_json(record_path, record, indent=None)
    return Split(folder, record["generated_prompts"], record["heldout_images"],
                 record.get("validation_prompts", [])[:generated_validation],
                 record.get("validation_images", [])[:setup.validation_queries - generated_validation])


def _eligible_queries(full, train: np.ndarray, order: np.ndarray, wanted: int) -> list[tuple[int, str]]:
    """The first `wanted` images of `order` outside `train` whose caption is new but made of training words."""
    captions = {c for i in train for c in full.captions(int(i))}
    vocabulary = {w for c in captions for w in split_words(c)}
    outside = set(range(len(full))) - {int(i) for i in train}
    eligible, seen = [], set()
    for i in order:
        if int(i) not in outside:
            continue
        prompt = full.captions(int(i))[0]
        words = split_words(prompt)
        if prompt not in captions and prompt not in seen and words and set(words) <= vocabulary:
            eligible.append((int(i), prompt))
            seen.add(prompt)
        if len(eligible) == wanted:
            break
    if len(eligible) < wanted:
        raise SettingsError(f"only {len(eligible)} held-out images have captions in the training vocabulary; ask for "
                            "fewer queries or more held-out images")
    return eligible


def heldout_queries(setup: LDSSetup, heldout: list[dict], resolution: int) -> list:
    from ..query import query_from_array

    full = open_dataset(setup.data)
    return [query_from_array(load_pixels(full, resolution, [entry["index"]])[0], entry["prompt"], resolution,
                             source=f"held-out image {full.key(entry['index'])}") for entry in heldout]


# ------------------------------------------------------------------------------------------------------ measure
def query_losses_under(folder: str, queries, query_losses: QueryLosses, device: str) -> np.ndarray:
    """L(ẑ_q) of every query under the model in `folder`; cached beside it (losses.json, by query key)."""
    from ..models.adapter import DiffusionModel

    path = os.path.join(os.path.dirname(folder), "losses.json")
    cache = read_entries(path)
    todo = [q for q, query in enumerate(queries) if query.key not in cache]
    if todo:
        model = DiffusionModel.load(folder, device=device)
        new = {queries[q].key: float(loss) for q, loss in zip(todo, query_losses(model, todo))}
        # Another evaluation on this folder may have added other queries meanwhile: add to the file, keep theirs.
        cache = add_entries(path, new, checksum=False)
    return np.array([cache[query.key] for query in queries])


# ----------------------------------------------------------------------------------------------------- the run
def plan_runs(setup: LDSSetup, data_folder: str, num_train: int) -> tuple:
    """(full, subset requests, ceiling requests): every training run the evaluation needs, whatever the methods."""
    everyone = np.arange(num_train)
    full = training_request(setup, data_folder)
    subsets = [training_request(setup, data_folder, np.setdiff1d(everyone, subset_rows(setup, num_train, m)))
               for m in range(setup.subsets)]
    ceiling = [training_request(setup, data_folder, request.exclude, seed=setup.seed + 1)
               for request in subsets[:setup.ceiling_subsets]]
    return full, subsets, ceiling


def run_lds(setup: LDSSetup, out_dir: str, workers: int = 1, threads: int = 1) -> dict:
    """The whole evaluation (resumable); returns the summary also written to out_dir/results.json."""
    from ..models.adapter import DiffusionModel

    os.makedirs(out_dir, exist_ok=True)
    # Methods (and their options: each method's scores are cached under its own key) may be added to a folder.
    record_setup(setup, out_dir, free=("methods", "method_options", "encoder", "validation_queries", "selection",
                                       "abu_step_factors"))
    split = split_data(setup, out_dir)
    dataset = open_dataset(split.folder)
    runs = os.path.join(out_dir, "retrains")
    full, subsets, ceiling = plan_runs(setup, split.folder, len(dataset))
    run_jobs(runs, [full], workers=1, threads=max(1, workers * threads))
    model = DiffusionModel.load(model_folder(runs, full), device=setup.device)
    queries = (generate_queries(setup, model, split.generated, out_dir)
               + heldout_queries(setup, split.heldout, model.resolution))
    kinds = np.array(["generated"] * len(split.generated) + ["held-out"] * len(split.heldout))
    validation_queries = (generate_queries(setup, model, split.validation_generated, out_dir, "validation-queries",
                                           setup.query_seed + VALIDATION_SEED_OFFSET)
                          + heldout_queries(setup, split.validation_heldout, model.resolution))
    masks = subset_masks(setup, len(dataset))

    def train_subsets():
        run_jobs(runs, subsets + ceiling, workers=workers, threads=threads)
        if not all(is_done(runs, r) for r in subsets + ceiling):
            raise RuntimeError("some subset models are still being trained by another process: run again later")

    def subset_losses(some_queries) -> np.ndarray:
        query_losses = QueryLosses(setup, some_queries)
        return np.stack([query_losses_under(model_folder(runs, r), some_queries, query_losses, setup.device)
                         for r in subsets])

    validation = None
    if setup.selection == "lds":  # the subsets must exist before α can be chosen on them
        train_subsets()
        validation = lds_validation(validation_queries, masks, subset_losses(validation_queries))
    seconds = {}
    scores = attribute_all(setup, model, dataset, queries, out_dir, seconds, validation)
    train_subsets()
    losses = subset_losses(queries)
    per_query = {name: linear_datamodeling_scores(method_scores, masks, losses)
                 for name, method_scores in scores.items()}
    # judges a query-independent ranking cannot fool (issue 28): centred LDS, the hub correlation and share
    centred = {name: centred_linear_datamodeling_scores(method_scores, masks, losses)
               for name, method_scores in scores.items()} if len(queries) >= 2 else {}
    hubs = {name: {"correlation": mean_and_se(hub_correlation(method_scores)),
                   "top10_share": hub_share(method_scores)}
            for name, method_scores in scores.items()} if len(queries) >= 2 else {}
    ceiling_per_query = None
    if ceiling:
        query_losses = QueryLosses(setup, queries)
        again = np.stack([query_losses_under(model_folder(runs, r), queries, query_losses, setup.device)
                          for r in ceiling])
        ceiling_per_query = np.array([spearman(-losses[:len(ceiling), q], -again[:, q]) for q in range(len(queries))])
    validation_table = None
    if validation_queries:
        if validation is None:
            validation = lds_validation(validation_queries, masks, subset_losses(validation_queries))
        validation_table = validation_lds(setup, model, dataset, validation, out_dir)
    summary = summarize(per_query, ceiling_per_query, kinds)
    summary["centred"] = {name: dict(zip(("mean", "se"), mean_and_se(np.nan_to_num(values, nan=0.0))))
                          for name, values in centred.items()}  # undefined (a constant prediction) counts as 0
    summary["hubs"] = {name: {"correlation": dict(zip(("mean", "se"), row["correlation"])),
                              "top10_share": row["top10_share"]} for name, row in hubs.items()}
    summary.update({
        "setup": json.loads(json.dumps(asdict(setup))), "num_train": len(dataset),
        "training_runs": {"full": 1, "subsets": len(subsets), "ceiling": len(ceiling),
                          "distinct": len({job_key(r) for r in [full, *subsets, *ceiling]})},
        "queries": [{"prompt": q.prompt, "kind": str(k), "source": q.source, "key": q.key}
                    for q, k in zip(queries, kinds)],
        "per_query": {name: values.tolist() for name, values in per_query.items()},
        "centred_per_query": {name: values.tolist() for name, values in centred.items()},
        "seconds_per_query": seconds,  # this run's wall time per query and method (≈ 0: read from an earlier run)
        "ceiling_per_query": None if ceiling_per_query is None else ceiling_per_query.tolist(),
        "validation": validation_table,
        "subset_losses": losses.tolist()})
    write_json(os.path.join(out_dir, "results.json"), summary)
    return summary


VALIDATION_SEED_OFFSET = 10_000  # generated validation queries use seeds apart from the evaluation queries


@dataclass
class LDSValidation(Validation):
    """Validation by the LDS of validation queries: masks (M, N) of the subsets, losses (M, Q) of the queries under
    the subset models."""

    masks: np.ndarray | None = None
    losses: np.ndarray | None = None

    def per_query(self, scores: np.ndarray) -> np.ndarray:
        return linear_datamodeling_scores(scores, self.masks, self.losses)


def lds_validation(queries, masks: np.ndarray, losses: np.ndarray) -> LDSValidation:
    """A method's mean LDS over validation queries; NaN LDS (constant scores) count as 0, so a setting cannot win by
    predicting nothing."""
    validation = LDSValidation("lds", list(queries), None, masks, losses)
    validation.judge = lambda scores: float(np.nan_to_num(validation.per_query(scores), nan=0.0).mean())
    return validation


def validation_lds(setup: LDSSetup, model, dataset, validation: LDSValidation, out_dir: str) -> dict:
    """{method: LDS mean ± SE over the validation queries} at the settings each method evaluates with: the table the
    default recipe is chosen from."""
    from ..methods import run_method
    from .method_setup import Workspaces, configured_method

    workspaces = Workspaces(model, dataset, os.path.join(out_dir, "work"))
    table = {}
    for name in setup.methods:
        method, workspace, options = configured_method(name, setup, workspaces, [], out_dir, validation)
        scores = run_method(method, workspace, validation.queries).scores
        values = validation.per_query(scores)
        mean, se = mean_and_se(values[np.isfinite(values)])
        table[name] = {"mean": mean, "se": se, "n": int(np.isfinite(values).sum()), "options": options,
                       "per_query": values.tolist()}
    return {"criterion": validation.criterion, "queries": [q.prompt for q in validation.queries], "table": table}


def summarize(per_query: dict[str, np.ndarray], ceiling: np.ndarray | None, kinds: np.ndarray) -> dict:
    """Mean ± SE over queries (NaN LDS, from a constant prediction, left out and counted) per method and kind."""
    def cell(values: np.ndarray) -> dict:
        finite = values[np.isfinite(values)]
        mean, se = mean_and_se(finite)
        return {"mean": mean, "se": se, "n": int(len(finite)), "undefined": int(len(values) - len(finite))}

    groups = {"all": np.ones(len(kinds), bool), **{kind: kinds == kind for kind in KINDS if (kinds == kind).any()}}
    table = [{"method": name, **{group: cell(values[mask]) for group, mask in groups.items()}}
             for name, values in per_query.items()]
    if ceiling is not None:
        table.append({"method": "ceiling (two seeds)", **{g: cell(ceiling[mask]) for g, mask in groups.items()}})
    return {"table": table, "groups": list(groups)}


def markdown_table(summary: dict) -> str:
    from .metrics import format_mean_se

    groups = summary["groups"]
    centred, hubs = summary.get("centred", {}), summary.get("hubs", {})
    extra = ["centred LDS", "hub correlation", "top-10 hub share"] if centred else []
    lines = ["| method | " + " | ".join([f"LDS {g} (n)" for g in groups] + extra) + " |",
             "|---|" + "---:|" * (len(groups) + len(extra))]
    for row in summary["table"]:
        cells = [f"{format_mean_se(row[g]['mean'], row[g]['se'], 3)} ({row[g]['n']})" for g in groups]
        if extra:
            name = row["method"]
            cells += ([format_mean_se(centred[name]["mean"], centred[name]["se"], 3),
                       format_mean_se(hubs[name]["correlation"]["mean"], hubs[name]["correlation"]["se"], 2),
                       f"{hubs[name]['top10_share']:.2f}"] if name in centred else ["", "", ""])
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if extra:
        lines += ["", "Centred LDS: predictions and losses centred over the queries per subset model (a ranking the "
                      "same for every query scores 0). Hub correlation: Spearman of each query's scores with the "
                      "other queries' mean (1: query-independent). Top-10 hub share: the share of all top-10 places "
                      "the 10 most frequent images take."]
    validation = summary.get("validation")
    if validation:
        lines += ["", f"Validation queries ({len(validation['queries'])}, split off before the evaluation queries and "
                      f"never evaluated on; AbU's step chosen by {validation['criterion']}): LDS at the settings above",
                  "", "| method | LDS validation (n) | step |", "|---|---:|---:|"]
        for name, row in validation["table"].items():
            step = row["options"].get("step", "")
            lines.append(f"| {name} | {format_mean_se(row['mean'], row['se'], 3)} ({row['n']}) | {step} |")
    return "\n".join(lines)
