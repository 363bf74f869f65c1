"""Retraining jobs (leave-K-out and subset retraining, evaluate/'s counterfactual, LDS and group judges): one folder per
(recipe, excluded set), so each is done once, skipped when done, and safe to run from several processes (or several
machines sharing a disk) at the same time.

    retrains/<key>/model/         the trained model (diffusers folders + training.json), written last
    retrains/<key>/job.json       the request: recipe, seed, excluded indices (sorted)
    retrains/<key>.lock           held while a process trains it (store.FileLock: a dead owner's lock is taken over)

A killed run leaves only a lock and a partial temporary folder: the next call trains that job again from the start.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from ..store import FileLock, write_json
from .run import TrainRequest, run_training

logger = logging.getLogger(__name__)

# Recipe fields a request could not set before retraining folders existed, left out of the key at the value those
# runs trained with, so their folders keep their names (and are reused, not retrained).
IMPLICIT = {"weight_decay": 0.0, "grad_clip": 1.0, "vae_batch_size": 64, "vae_lr": 1e-3, "vae_kl_weight": 1e-6,
            "image_column": "image", "subset": None}


def job_key(request: TrainRequest) -> str:
    """A hash of everything that changes the trained weights (not where they go, not the command line)."""
    recipe = dataclasses.asdict(request)
    # new_token_rows: a run derives it from add_tokens (TrainRequest.training_config), so the request's own is unused.
    for name in ("out", "command", "new_token_rows"):
        recipe.pop(name)
    device = recipe.pop("device").split(":")[0]  # the kind of device, not which of several GPUs
    if device != "cpu":  # hashed only off the CPU: keys made before requests named a device stay valid
        recipe["device"] = device
    recipe["exclude"] = sorted({int(i) for i in request.exclude})
    if request.subset is not None:  # what the subset file says, not its name: an edited file is another recipe
        with open(request.subset, "rb") as handle:
            recipe["subset"] = hashlib.sha256(handle.read()).hexdigest()
    recipe = {name: value for name, value in recipe.items() if not (name in IMPLICIT and value == IMPLICIT[name])}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def model_folder(root: str, request: TrainRequest) -> str:
    return os.path.join(root, job_key(request), "model")


def is_done(root: str, request: TrainRequest) -> bool:
    return os.path.isfile(os.path.join(model_folder(root, request), "training.json"))


def run_job(root: str, request: TrainRequest, threads: int = 0) -> str:
    """Train `request` into its folder unless it is done (or being trained by another live process): returns
    "done", "trained" or "busy"."""
    import torch

    key = job_key(request)
    folder = os.path.join(root, key)
    if is_done(root, request):
        return "done"
    os.makedirs(folder, exist_ok=True)
    lock = FileLock(folder + ".lock")
    if not lock.try_acquire():
        return "busy"
    try:
        if is_done(root, request):
            return "done"
        if threads:
            torch.set_num_threads(threads)
        partial = os.path.join(folder, f"model.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        write_json(os.path.join(folder, "job.json"), dataclasses.asdict(request) | {
            "exclude": sorted(set(request.exclude)), "key": key}, indent=None, sort_keys=False, checksum=False)
        run_training(dataclasses.replace(request, out=partial), quiet=True)
        shutil.rmtree(os.path.join(folder, "model"), ignore_errors=True)
        os.replace(partial, os.path.join(folder, "model"))  # the finished model appears at once, complete
        return "trained"
    finally:
        lock.release()


def run_jobs(root: str, requests: list[TrainRequest], workers: int = 1, threads: int = 1) -> dict[str, str]:
    """Every request trained (or found done), `workers` processes at a time; returns {key: outcome}."""
    unique = {}
    for request in requests:
        unique.setdefault(job_key(request), request)
    pending = [r for k, r in unique.items() if not is_done(root, r)]
    logger.info(f"retraining: {len(unique)} runs, {len(unique) - len(pending)} already done, {len(pending)} to train "
                f"({workers} worker(s) × {threads} thread(s))")
    outcomes = {k: "done" for k, r in unique.items() if is_done(root, r)}
    if workers <= 1:
        for number, request in enumerate(pending, 1):
            outcomes[job_key(request)] = run_job(root, request, threads)
            logger.info(f"retraining: {number}/{len(pending)} finished")
        return outcomes
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, root, r, threads): job_key(r) for r in pending}
        for number, future in enumerate(as_completed(futures), 1):
            outcomes[futures[future]] = future.result()
            logger.info(f"retraining: {number}/{len(pending)} finished")
    busy = [k for k, v in outcomes.items() if v == "busy"]
    if busy:
        logger.info(f"retraining: {len(busy)} run(s) are being trained by another process; run again to collect them")
    return outcomes
