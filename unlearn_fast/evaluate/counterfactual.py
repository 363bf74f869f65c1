"""Leave-K-out retraining, the gold standard of METHOD.md ("How attribution is judged" §1).

    split:      a seeded subset of the data trains the original model; prompts of the other images are the queries
    original:   train from scratch (the base model's VAE is shared by every run, as in latent diffusion)
    queries:    the original model generates one image per held-out prompt (seeded)
    attribute:  every method scores the training set for every query (one work directory, one report per method)
    retrain:    for each method, query and K, train from scratch without the top-K, same recipe and seed; random
                removal (the same draws for every query), and the full set with other seeds (the noise floor)
    measure:    ΔL = L(ẑ; retrained) − L(ẑ; original) on a fine timestep grid with the same noise, and
                ΔG = pixel MSE between the images the two models make from the same seed and prompt
    specificity: for each method, K and pair of queries A ≠ B, ΔL_A(without A's top K) − ΔL_A(without B's top K),
                A's loss measured on the model retrained for B too: a ranking that is the same for every query removes
                the same images for A and B and scores 0, however much its removals raise every loss

Every stage is an artefact in the output folder: a rerun skips what is done, and retraining runs (training/retraining.py)
may be trained by several processes at once.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..data import open_dataset
from ..data.dataset import SubsetDataset
from ..data.export import export_imagefolder
from ..engine.step_rules import GRID_FACTORS
from ..errors import SettingsError
from ..models.text_encoder import split_words
from ..engine.loss_grid import LossGrid
from ..engine.scoring import per_example_losses
from ..store import add_entries, read_entries
from ..ranking import ranking
from ..training.retraining import is_done, job_key, model_folder, run_jobs
from ..training.run import TrainRequest
from .metrics import mean_and_se, pixel_mse
from .method_setup import Workspaces, configured_method
from .output_files import write_json, write_png
from .setup_record import record_setup

logger = logging.getLogger(__name__)


@dataclass
class CounterfactualSetup:
    """What is evaluated and how. fractions: K as shares of the training set. methods: names for
    methods.build_method ("abu", "dtrak", "trak", "pixel", "feature"); random removal is always measured.
    steps … warmup_steps: the training recipe shared by the original model and every retrain."""

    data: str = "default"
    base_model: str = "default"
    train_images: int | None = 400
    queries: int = 3
    fractions: tuple[float, ...] = (0.005, 0.01, 0.04)
    methods: tuple[str, ...] = ("abu", "dtrak", "pixel")
    random_draws: int = 3
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
    method_options: dict = field(default_factory=dict)  # {method name: {setting: value}}
    # AbU's step is chosen on validation prompts (training captions) unless method_options gives one.
    abu_step_factors: tuple[float, ...] = GRID_FACTORS  # AbU's step validated at its value × these
    validation_prompts: int = 4
    device: str = "cpu"  # where every run trains and every model is measured ("cpu", "cuda", "cuda:N")

    def __post_init__(self):
        if not self.fractions or any(not 0 < f < 1 for f in self.fractions):
            raise SettingsError(f"fractions must be shares of the training set in (0, 1), got {self.fractions}")
        if self.queries < 1 or self.random_draws < 1:
            raise SettingsError(f"queries and random_draws must be at least 1, got {self.queries}, "
                                f"{self.random_draws}")


def removal_sizes(setup: CounterfactualSetup, num_train: int) -> list[int]:
    return [max(1, round(f * num_train)) for f in setup.fractions]


# ------------------------------------------------------------------------------------------------------ split
def split_data(setup: CounterfactualSetup, out_dir: str) -> tuple[str, list[str]]:
    """The training folder (a seeded subset, exported once) and the held-out query prompts: captions of images
    outside it, written only with words the training captions use (a word the model never saw is no test of
    attribution), and not equal to any training caption."""
    folder = os.path.join(out_dir, "data")
    record_path = os.path.join(out_dir, "split.json")
    if os.path.isfile(record_path):
        return folder, read_entries(record_path)["query_prompts"]
    full = open_dataset(setup.data)
    order = np.random.default_rng(setup.split_seed).permutation(len(full))
    n = len(full) if setup.train_images is None else min(setup.train_images, len(full) - setup.queries)
    train = np.sort(order[:n])
    captions = {c for i in train for c in full.captions(int(i))}
    vocabulary = {w for c in captions for w in split_words(c)}
    prompts = []
    for i in order[n:]:
        prompt = full.captions(int(i))[0]
        words = split_words(prompt)
        if prompt not in captions and prompt not in prompts and words and set(words) <= vocabulary:
            prompts.append(prompt)
        if len(prompts) == setup.queries:
            break
    if len(prompts) < setup.queries:
        raise SettingsError(f"only {len(prompts)} held-out prompts use the training vocabulary; ask for fewer "
                            f"queries or more held-out images")
    export_imagefolder(SubsetDataset(full, train), folder)
    write_json(record_path, {"data": setup.data, "train_indices": train.tolist(), "query_prompts": prompts},
               indent=None)
    return folder, prompts


# ------------------------------------------------------------------------------------------------------ runs
def training_request(setup: CounterfactualSetup, data_folder: str, exclude=(), seed: int | None = None
                     ) -> TrainRequest:
    # An absolute path, so the run's key (training.retraining.job_key) does not depend on the working directory.
    vae_from = setup.base_model if setup.base_model == "default" else os.path.abspath(setup.base_model)
    return TrainRequest(data=os.path.abspath(data_folder), vae_from=vae_from,
                        exclude=sorted(int(i) for i in exclude), steps=setup.steps, batch_size=setup.batch_size,
                        lr=setup.lr, warmup_steps=setup.warmup_steps, seed=setup.seed if seed is None else seed,
                        command="unlearn-fast evaluate counterfactual", device=setup.device)


def random_removals(setup: CounterfactualSetup, num_train: int, draw: int, k: int) -> list[int]:
    """Draw d removes the first K of its own seeded permutation: nested across K, shared by every query."""
    return sorted(np.random.default_rng([setup.split_seed, 7919, draw]).permutation(num_train)[:k].tolist())


def plan_removals(setup: CounterfactualSetup, scores: dict[str, np.ndarray]) -> list[dict]:
    """One entry per measured removal: {method, query (None: every query), k, draw, exclude}."""
    if not scores:
        raise SettingsError("no method scores to plan removals from")
    num_train = next(iter(scores.values())).shape[1]
    plan = []
    for k in removal_sizes(setup, num_train):
        for name, method_scores in scores.items():
            for q, row in enumerate(method_scores):
                plan.append({"method": name, "query": q, "k": k, "draw": 0,
                             "exclude": sorted(ranking(row)[:k].tolist())})
        for draw in range(setup.random_draws):
            plan.append({"method": "random", "query": None, "k": k, "draw": draw,
                         "exclude": random_removals(setup, num_train, draw, k)})
    return plan


# ---------------------------------------------------------------------------------------------------- measure
class QueryLosses:
    """L(ẑ) of each query under a model, on the fine grid with the same noise for every model (ids = query number);
    each model uses its own text encoder (retrained with it) and the shared VAE's latents."""

    def __init__(self, setup: CounterfactualSetup, queries):
        # The judge's noise stays keyed per query (as every recorded run measured it), whatever methods' default is.
        self.grid = LossGrid(seed=setup.seed, timesteps=setup.loss_timesteps, flips=True, batch_size=512,
                             noise="example")
        self.queries = queries

    def __call__(self, model, which: list[int] | None = None) -> np.ndarray:
        """L(ẑ_q) for the queries `which` (default: all), in that order."""
        which = list(range(len(self.queries))) if which is None else list(which)
        x0 = model.encode_images(np.stack([self.queries[q].image for q in which]))
        cond = model.encode_text([self.queries[q].prompt for q in which])
        losses = per_example_losses(model, x0, cond, torch.tensor(which), self.grid)
        return losses.double().mean(dim=(1, 2)).cpu().numpy()


def measure_model(folder: str, queries, which: list[int], query_losses: QueryLosses, setup: CounterfactualSetup,
                  encoder=None) -> dict[int, dict]:
    """{query: {loss, image (path), mse? , feature?}} for the queries `which` under the model in `folder`;
    cached in the folder's measure.json, so a rerun measures only what is new."""
    from ..models.adapter import DiffusionModel

    cache_path = os.path.join(os.path.dirname(folder), "measure.json")
    cache = read_entries(cache_path)
    todo = [q for q in which if queries[q].key not in cache]
    if todo:
        model = DiffusionModel.load(folder, device=setup.device)
        losses = dict(zip(todo, query_losses(model, todo)))  # only the queries not measured yet
        new = {}
        for q in todo:
            query = queries[q]
            image = model.generate([query.prompt], seed=query.seed, steps=setup.query_steps,
                                   guidance=setup.guidance)[0]
            path = os.path.join(os.path.dirname(folder), f"generated-{query.key}.png")
            write_png(path, image)
            entry = {"loss": float(losses[q]), "image": os.path.basename(path),
                     "mse": float(pixel_mse(query.image, image[None])[0])}
            if encoder is not None:
                entry["feature"] = float(1.0 - encoder.image_similarity(image, query.image))
            new[query.key] = entry
        # Another process may have measured other queries of this model meanwhile: add to the file, keep theirs.
        cache = add_entries(cache_path, new, checksum=False)
    return {q: cache[queries[q].key] for q in which}


def query_losses_under(folder: str, queries, which: list[int], query_losses: QueryLosses, setup: CounterfactualSetup
                       ) -> dict[int, float]:
    """{query: L(ẑ)} of the queries `which` under the model in `folder`, without generating (what specificity needs):
    read from measure.json where the query was measured, else computed and cached in losses.json beside it."""
    from ..models.adapter import DiffusionModel

    measured, cache_path = {}, os.path.join(os.path.dirname(folder), "losses.json")
    for name in ("measure.json", "losses.json"):
        measured.update({key: value["loss"] if isinstance(value, dict) else value
                         for key, value in read_entries(os.path.join(os.path.dirname(folder), name)).items()})
    todo = [q for q in which if queries[q].key not in measured]
    if todo:
        model = DiffusionModel.load(folder, device=setup.device)
        new = {queries[q].key: float(loss) for q, loss in zip(todo, query_losses(model, todo))}
        add_entries(cache_path, new, checksum=False)
        measured.update(new)
    return {q: measured[queries[q].key] for q in which}


def counterfactual_specificity(rows: list[dict], cross: list[dict], methods) -> list[dict]:
    """Per (method, K): mean ± SE over queries A of  ΔL_A(top_A removed) − mean over B ≠ A of ΔL_A(top_B removed).
    rows: ΔL of each query under its own removal; cross: ΔL of query A under the removal planned for query B."""
    own = {(r["method"], r["k"], r["query"]): r["delta_loss"] for r in rows if r["method"] in methods}
    table = []
    for method in methods:
        for k in sorted({key[1] for key in own if key[0] == method}):
            per_query = []
            for a in sorted(q for (m, kk, q) in own if m == method and kk == k):
                others = [c["delta_loss"] for c in cross if c["method"] == method and c["k"] == k and c["query"] == a]
                if others:
                    per_query.append(own[(method, k, a)] - float(np.mean(others)))
            mean, se = mean_and_se(per_query)
            table.append({"method": method, "k": k, "specificity": {"mean": mean, "se": se, "n": len(per_query)}})
    return table


# --------------------------------------------------------------------------------------------------- the run
def generate_queries(setup: CounterfactualSetup, model, prompts: list[str], out_dir: str, folder: str = "queries",
                     first_seed: int | None = None):
    """The original model's image for each held-out prompt (seed first_seed + q, default query_seed + q), saved once
    in out_dir/folder and read back."""
    from PIL import Image

    from ..query import Query, query_from_prompt

    folder = os.path.join(out_dir, folder)
    os.makedirs(folder, exist_ok=True)
    queries = []
    for q, prompt in enumerate(prompts):
        path = os.path.join(folder, f"q{q}.png")
        seed = (setup.query_seed if first_seed is None else first_seed) + q
        generation = {"seed": seed, "steps": setup.query_steps, "guidance": setup.guidance}
        if os.path.isfile(path):
            queries.append(Query(np.array(Image.open(path).convert("RGB")), prompt, f"generated (seed {seed})", seed,
                                 generation))
            continue
        query = query_from_prompt(model, prompt, seed=seed, steps=setup.query_steps, guidance=setup.guidance)
        write_png(path, query.image)  # read back as the query on every rerun: never half-written
        queries.append(query)
    return queries


def attribute_all(setup: CounterfactualSetup, model, dataset, queries, out_dir: str,
                  seconds: dict | None = None, validation=None) -> dict[str, np.ndarray]:
    """{method: scores (Q, N)} for every method of the setup; each method's report under attributions/<name>/.
    seconds: filled with each method's wall time per query (validation included; ~0 when read from its cache).
    validation: what chooses AbU's α (evaluate.validation.Validation; None: MRR on training captions)."""
    import time

    from ..methods import run_method

    workspaces = Workspaces(model, dataset, os.path.join(out_dir, "work"))
    scores = {}
    for name in setup.methods:
        started = time.perf_counter()
        method, workspace, _ = configured_method(name, setup, workspaces, [q.prompt for q in queries], out_dir,
                                                  validation)
        attribution = run_method(method, workspace, queries)
        attribution.save(os.path.join(out_dir, "attributions", name), top_k=12)
        scores[name] = attribution.scores
        if seconds is not None:
            seconds[name] = round((time.perf_counter() - started) / len(queries), 2)
        logger.info(f"attributed with {name}: {attribution.timings}")
    return scores


def run_counterfactual(setup: CounterfactualSetup, out_dir: str, workers: int = 1, threads: int = 1) -> dict:
    """The whole evaluation (resumable); returns the summary also written to out_dir/results.json."""
    from ..models.adapter import DiffusionModel

    os.makedirs(out_dir, exist_ok=True)
    record_setup(setup, out_dir)
    data_folder, prompts = split_data(setup, out_dir)
    dataset = open_dataset(data_folder)
    runs = os.path.join(out_dir, "retrains")
    original = training_request(setup, data_folder)
    run_jobs(runs, [original], workers=1, threads=max(1, workers * threads))
    model = DiffusionModel.load(model_folder(runs, original), device=setup.device)
    queries = generate_queries(setup, model, prompts, out_dir)
    scores = attribute_all(setup, model, dataset, queries, out_dir)
    plan = plan_removals(setup, scores)
    noise = [training_request(setup, data_folder, seed=s) for s in setup.noise_seeds]
    requests = [training_request(setup, data_folder, entry["exclude"]) for entry in plan] + noise
    run_jobs(runs, requests, workers=workers, threads=threads)
    if not all(is_done(runs, r) for r in requests):
        raise RuntimeError("some retraining runs are still being trained by another process: run again later")

    encoder = _encoder(setup)
    query_losses = QueryLosses(setup, queries)
    every = list(range(len(queries)))
    base = measure_model(model_folder(runs, original), queries, every, query_losses, setup, encoder)
    rows = []
    for entry, request in zip(plan, requests):
        which = every if entry["query"] is None else [entry["query"]]
        measured = measure_model(model_folder(runs, request), queries, which, query_losses, setup, encoder)
        for q, values in measured.items():
            rows.append(_delta_row(entry["method"], q, entry["k"], entry["draw"], job_key(request), values, base[q]))
    for seed, request in zip(setup.noise_seeds, noise):
        for q, values in measure_model(model_folder(runs, request), queries, every, query_losses, setup,
                                       encoder).items():
            rows.append(_delta_row("noise floor", q, 0, seed, job_key(request), values, base[q]))
    cross = []  # each query's loss under the models retrained for the other queries (specificity)
    for entry, request in zip(plan, requests):
        if entry["query"] is not None and len(queries) > 1:
            others = [q for q in every if q != entry["query"]]
            for q, loss in query_losses_under(model_folder(runs, request), queries, others, query_losses,
                                              setup).items():
                cross.append({"method": entry["method"], "k": entry["k"], "query": q, "removed_for": entry["query"],
                              "delta_loss": loss - base[q]["loss"]})
    summary = summarize(rows, setup, num_train=len(dataset))
    summary["specificity"] = counterfactual_specificity(rows, cross, setup.methods)
    summary.update({"queries": [{"prompt": q.prompt, "seed": q.seed, "key": q.key} for q in queries],
                    "original": {"key": job_key(original), "losses": [base[q]["loss"] for q in every]},
                    "rows": rows, "cross_rows": cross})
    write_json(os.path.join(out_dir, "results.json"), summary)
    return summary


def _encoder(setup: CounterfactualSetup):
    if not setup.encoder:
        return None
    from ..methods.feature import FeatureSimilarity

    return FeatureSimilarity(encoder=setup.encoder)


def _delta_row(method: str, q: int, k: int, draw: int, key: str, values: dict, base: dict) -> dict:
    row = {"method": method, "query": q, "k": k, "draw": draw, "run": key,
           "delta_loss": values["loss"] - base["loss"], "delta_mse": values["mse"], "image": values["image"]}
    if "feature" in values:
        row["delta_feature"] = values["feature"]
    return row


# ---------------------------------------------------------------------------------------------------- summary
def summarize(rows: list[dict], setup: CounterfactualSetup, num_train: int) -> dict:
    """Mean ± standard error over queries of ΔL and ΔG per (method, K). Random removal is first averaged over its
    draws per query (the SE is then over queries, as for every method); the noise floor is ΔL of the other-seed
    full retrains, also per query."""
    table = []
    metrics = [m for m in ("delta_loss", "delta_mse", "delta_feature") if any(m in r for r in rows)]
    for method in [*setup.methods, "random", "noise floor"]:
        for k in sorted({r["k"] for r in rows if r["method"] == method}):
            selected = [r for r in rows if r["method"] == method and r["k"] == k]
            entry = {"method": method, "k": k, "fraction": k / num_train if k else 0.0}
            for metric in metrics:
                per_query = {}
                for r in selected:
                    if metric in r:
                        per_query.setdefault(r["query"], []).append(r[metric])
                mean, se = mean_and_se([np.mean(v) for v in per_query.values()])
                entry[metric] = {"mean": mean, "se": se, "n": len(per_query)}
            table.append(entry)
    return {"setup": json.loads(json.dumps(asdict(setup))), "num_train": num_train, "table": table,
            "paired": paired_with_random(rows, setup.methods, metrics)}


def paired_with_random(rows: list[dict], methods, metrics) -> list[dict]:
    """Per (method, K): mean ± SE over queries of the PAIRED difference metric(method's removal, q) − metric(random
    removal, q), random averaged over its draws for that same query. Pairing removes the query-to-query spread (some
    queries' losses move under any retraining), which dominates the unpaired SEs."""
    random = {}
    for r in rows:
        if r["method"] == "random":
            random.setdefault((r["k"], r["query"]), []).append(r)
    table = []
    for method in methods:
        for k in sorted({r["k"] for r in rows if r["method"] == method}):
            entry = {"method": method, "k": k}
            for metric in metrics:
                differences = [r[metric] - np.mean([d[metric] for d in random[(k, r["query"])]])
                               for r in rows if r["method"] == method and r["k"] == k and metric in r
                               and (k, r["query"]) in random]
                mean, se = mean_and_se(differences)
                entry[metric] = {"mean": mean, "se": se, "n": len(differences)}
            table.append(entry)
    return table
