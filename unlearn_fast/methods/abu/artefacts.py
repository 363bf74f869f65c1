"""AbU's artefacts in the work directory, each made by one named phase and kept under its own name:

    fisher        F + λ over the Fisher group, float64 sums per chunk of rows      fisher.safetensors
    curvature     K-FAC / EK-FAC factors of the group's Linear layers             curvature/factors_<kind>/ (kronfluence's)
    base_losses   L(z, θ0) of every caption row on the scoring grid                losses_base/

They stand on the Workspace (latents, text conditioning, caption rows, the chunk plan) and are made only for the methods
that read them: a pixel or D-TRAK run never computes a Fisher. Each fit_* function computes what is missing (chunked,
resumable, split over torchrun's ranks: call it on every rank) and returns the artefact; later calls read it back. No
attribute read starts a computation: the names say when work may happen.
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import torch

from ...engine.curvature import (FACTOR_NAMES, KroneckerCurvature, add_lambda, add_sums, covariance_sums, eigenbases,
                                 factor_files, from_kronfluence, kronfluence_arguments, lambda_sums, linear_layers,
                                 sums_from_tensors, sums_to_tensors)
from ...engine.fisher import finish_fisher, fisher_metadata, fisher_sums
from ...workspace import Workspace

PHASES = ("fisher", "base_losses")  # what every AbU query stands on, made by prepare_abu (curvature: on first use)


def prepare_abu(workspace: Workspace) -> None:
    """The phases every AbU query stands on, each timed and logged once per Workspace (Workspace.once)."""
    workspace.once("fisher", lambda: fit_fisher(workspace))
    workspace.once("base_losses", lambda: fit_base_losses(workspace))


def fisher_rows(workspace: Workspace) -> np.ndarray:
    """The caption rows the Fisher (and the Kronecker curvature) average over: all, or a seeded subset."""
    rows = np.arange(len(workspace.caption_rows))
    chosen = workspace.settings.fisher_examples
    if chosen is not None and chosen < len(rows):  # a seeded subset: F is an expectation, not a sum
        rows = np.sort(np.random.default_rng(workspace.settings.fisher.seed).choice(rows, chosen, replace=False))
    return rows


def fit_fisher(workspace: Workspace) -> dict[str, torch.Tensor]:
    """F + λ over the Fisher group: float64 sums per chunk of rows (resumable, split over the ranks), added in chunk
    order, so F has the same bits for any world size; then the mean."""
    def make():
        if not workspace.store.exists("fisher", ".safetensors"):
            _compute_fisher(workspace)
        return workspace.store.load_tensors("fisher")[0]
    return workspace.cached("fisher", make)


def _compute_fisher(workspace: Workspace) -> None:
    settings, model, store = workspace.settings, workspace.model, workspace.store
    rows = fisher_rows(workspace)
    params = model.parameter_group(settings.fisher_group)
    parts = workspace.summed_pass("fisher_parts", "fisher", rows, lambda x0, cond, ids: {
        n: v.cpu() for n, v in fisher_sums(model, params, x0, cond, ids, settings.fisher).items()})

    def write():
        total = None
        for name in parts:  # a fixed order: every part is read back from its file, whoever computed it
            part = store.load_tensors(name)[0]
            total = part if total is None else {n: total[n] + part[n] for n in part}
        fisher = finish_fisher(total, len(rows) * settings.fisher.samples_per_example, settings.fisher.damping)
        meta = {"group": settings.fisher_group, "rows": len(rows),
                "model_fingerprint": model.fingerprint(workspace.model_fingerprints)}
        store.save_tensors("fisher", fisher, fisher_metadata(settings.fisher, meta))  # load_fisher reads it
        shutil.rmtree(store.artefact_path("fisher_parts"), ignore_errors=True)
    workspace.on_main(write)


def curvature_folder(kind: str, root: str = "curvature") -> str:
    """The factors' artefact under root (curvature/; curvature_parts/ for the passes' sums): kronfluence's folder name
    (factors_<name>), so the work directory's curvature/ is a
    kronfluence analysis folder (kronfluence.Analyzer(analysis_name="curvature", output_dir=WORK_DIR) loads <kind>)."""
    return f"{root}/factors_{kind}"


def fit_curvature(workspace: Workspace, kind: str, damping: float = 0.1) -> KroneckerCurvature:
    """K-FAC or EK-FAC factors (engine/curvature.py) of the Fisher group's Linear layers over the Fisher's rows, stored
    as kronfluence 1.0 stores them under curvature/factors_<kind>/ (one safetensors file per factor name, the counts,
    factor_arguments.json). Both passes (the covariances, then EK-FAC's eigenvalues in their eigenbasis) run in the
    Fisher's chunks of rows, each chunk's sums saved as it finishes and split over the ranks: a killed run resumes with
    the missing chunks only."""
    folder, store = curvature_folder(kind), workspace.store

    def make():
        if not store.exists(f"{folder}/activation_eigenvectors", ".safetensors"):
            _compute_curvature(workspace, kind)
        layout = {name: store.load_tensors(f"{folder}/{name}")[0] for name in FACTOR_NAMES
                  if store.exists(f"{folder}/{name}", ".safetensors")}
        return from_kronfluence(layout, kind)
    return dataclasses.replace(workspace.cached(f"curvature-{kind}", make), damping=damping)


def _compute_curvature(workspace: Workspace, kind: str) -> None:
    settings, model, store = workspace.settings, workspace.model, workspace.store
    # The group's other weights (convolutions, norms) take the diagonal Fisher (method.py: preconditioner).
    paths = linear_layers(model.unet, model.parameter_group(settings.fisher_group), others=True)
    fisher, rows = settings.fisher, fisher_rows(workspace)
    parts = curvature_folder(kind, root="curvature_parts")  # the passes' resumable sums

    def run(stage: str, sums_of) -> dict:
        """One resumable pass (its parts under curvature_parts/factors_<kind>/<stage>/), added in a fixed order."""
        total = None
        for name in workspace.summed_pass(f"{parts}/{stage}", f"{kind} {stage}", rows,
                                          lambda x0, cond, ids: sums_to_tensors(sums_of(x0, cond, ids))):
            total = add_sums(total, sums_from_tensors(store.load_tensors(name)[0]))
        return total

    factors = eigenbases(run("covariance", lambda x0, cond, ids: covariance_sums(model, paths, x0, cond, ids, fisher)))
    if kind == "ekfac":
        add_lambda(factors, run("lambda", lambda x0, cond, ids: lambda_sums(model, factors, x0, cond, ids, fisher)))

    def write():
        folder = curvature_folder(kind)
        store.save_json(f"{folder}/factor_arguments", kronfluence_arguments(kind))
        for name, per_layer in factor_files(KroneckerCurvature(factors, kind)):
            store.save_tensors(f"{folder}/{name}", per_layer)
        shutil.rmtree(store.artefact_path(parts), ignore_errors=True)
    workspace.on_main(write)


def fit_base_losses(workspace: Workspace) -> np.ndarray:
    """L(z, θ0): computed once per work directory and reused by every query (a read-only memmap)."""
    return workspace.cached("base_losses", lambda: workspace.losses("losses_base"))
