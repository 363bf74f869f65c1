"""Attribution by unlearning (the method of this package), standing on the Workspace like every other method.

    query ─ unlearn (Fisher-preconditioned ascent: engine/unlearn.py) ─ losses after (a Workspace pass)
          ─ τ = after − before

Each query keeps its own folder in the work directory (queries/<query key>-<settings hash>/: the query image, its
unlearned weights, its losses after and its scores), so a resumed run neither unlearns nor rescores twice, and every
score rule of one unlearning shares the folder. Under torchrun rank 0 unlearns and writes; the losses after are split
over the ranks like every pass.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ...attribution import Attribution
from ...engine.curvature import layer_damped
from ...errors import SettingsError
from ...query import Query
from ...score_rules import REFERENCE_RULES, by_sensitivity, calibrate, loss_change_scores
from ...engine.loss_grid import NOISE_KEYS, LossGrid
from ...engine.unlearn import UnlearnSettings, unlearn
from ...settings import settings_key
from ...workspace import Workspace, rows_of
from .artefacts import fit_base_losses, fit_curvature, fit_fisher, prepare_abu
from .recipes import VARIANTS
from ..base import AttributionMethod, check_prepared, labelled, method_label

# Unlearning settings that change how scores are read from the losses, not the unlearned weights or the losses after:
# every score rule of one unlearning shares its query folder.
SCORE_ONLY = ("score", "references", "spread")
RETAIN_STREAM = 9173  # the stream of the retained rows' draw (UnlearnSettings.retain)
REFERENCE_SEED = 4242  # the calibrated score's reference queries: generations from captions drawn with this seed


@dataclass
class AbU(AttributionMethod):
    """unlearn: how each query is unlearned and scored. preparation: what the work directory must be prepared with
    for this variant (PrepareSettings overrides: the paper's recipe scores with noise per example, {"noise":
    "example"}); {} = any work directory. The scoring noise itself is the work directory's."""

    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    preparation: dict = field(default_factory=dict)
    name: str = "abu"
    title = "AbU (attribution by unlearning)"
    score_meaning = "the image's loss after − before unlearning the query: how much it is forgotten with it"

    def __post_init__(self):
        check_preparation(self.name, self.preparation)

    @classmethod
    def variant(cls, name: str, **options) -> "AbU":
        """The variant `name` (recipes.VARIANTS), with `options` (UnlearnSettings fields or noise) on top."""
        if name not in VARIANTS:
            raise SettingsError(f"unknown AbU variant {name!r}; choose from {', '.join(VARIANTS)}")
        if "alpha" in options:
            raise SettingsError(f"method {name!r}: alpha is gone: give step=RULE:VALUE (fixed:7.5e-6, alpha/N:0.1 or "
                                f"rise:0.1), e.g. --set {name}.step=alpha/N:{options['alpha']}")
        values = {**VARIANTS[name], **options}
        preparation = {key: values.pop(key) for key in PREPARATION_KEYS if key in values}
        try:
            return cls(UnlearnSettings(**values), preparation=preparation, name=name)
        except TypeError as error:
            raise SettingsError(f"method {name!r}: {error}") from None

    def settings(self) -> dict:
        return {**self.unlearn.as_record(), **self.preparation}

    def prepare_overrides(self) -> dict:
        """What the work directory's PrepareSettings must say for this variant (beyond the defaults)."""
        return abu_overrides(self.preparation, self.unlearn)

    def prepare(self, workspace: Workspace) -> None:
        prepare_abu(workspace)

    def check(self, workspace: Workspace) -> None:
        check_prepared(workspace, self.name, self.preparation)
        check_unlearning(workspace, self.unlearn)

    def score(self, workspace: Workspace, queries) -> np.ndarray:
        return self.attribute(workspace, queries).scores

    def attribute(self, workspace: Workspace, queries) -> Attribution:
        self.check(workspace)
        # Each query is cached in its own folder (unlearned weights, losses after, scores): records point there.
        return labelled(attribute_by_unlearning(workspace, list(queries), self.unlearn), self)


# ---------------------------------------------------------------------------------------------- the per-query work
def attribute_by_unlearning(workspace: Workspace, queries: list[Query] | Query,
                            settings: UnlearnSettings | None = None) -> Attribution:
    """Scores (queries, N) for each query under `settings`; every query's unlearned weights and losses are resumable
    artefacts of the work directory."""
    queries = [queries] if isinstance(queries, Query) else list(queries)
    settings = settings or UnlearnSettings()
    check_unlearning(workspace, settings)
    for query in queries:
        if workspace.model.truncated_prompts([query.prompt]):
            workspace.log(f"warning: the query prompt {query.prompt[:80]!r} is longer than the text encoder's "
                          f"{workspace.model.text.max_tokens} tokens: it is cut to them, as the model read it when "
                          "generating")
    with workspace.locked():
        workspace.prepare([AbU(settings)])
        records = _attribute_all(workspace, queries, settings)
        scores = [_scores(workspace, query, settings, record["folder"]) for query, record in zip(queries, records)]
        model_folder = getattr(workspace.model, "folder", None)  # set by DiffusionModel.load
        records = [{**record, "unlearn": settings.as_record(), **method_label(AbU(settings)),
                    **({"model": str(model_folder)} if model_folder else {})} for record in records]
    return Attribution(scores=np.stack(scores), queries=queries, records=records, dataset=workspace.dataset,
                       work_dir=str(workspace.store.path), timings=dict(workspace.timings),
                       data_fingerprint=workspace.data_fingerprint())


PREPARATION_KEYS = ("noise",)  # the preparation a variant may ask for (its other options are UnlearnSettings fields)


def check_preparation(method: str, preparation: dict) -> None:
    """A SettingsError for a preparation an AbU method cannot ask for."""
    unknown = [key for key in preparation if key not in PREPARATION_KEYS]
    if unknown:
        raise SettingsError(f"{method}: preparation {unknown[0]!r} is not one of {PREPARATION_KEYS}")
    if "noise" in preparation and preparation["noise"] not in NOISE_KEYS:
        raise SettingsError(f"{method}: noise must be one of {NOISE_KEYS}, got {preparation['noise']!r}")


def abu_overrides(preparation: dict, settings: UnlearnSettings) -> dict:
    """The PrepareSettings fields an AbU-based method needs beyond the defaults: its preparation (less what the
    default preparation already is), the Fisher's group."""
    overrides = {k: v for k, v in preparation.items() if not (k == "noise" and v == LossGrid.noise)}
    if settings.group != "kv" and settings.precondition:
        overrides["fisher_group"] = settings.group
    return overrides


def check_unlearning(workspace: Workspace, settings: UnlearnSettings) -> None:
    """The unlearning settings checked against the model and the Fisher's group before any work (SettingsError)."""
    changed = workspace.model.parameter_group(settings.group)
    if settings.precondition:
        covered = workspace.model.parameter_group(workspace.settings.fisher_group)
        outside = [name for name in changed if name not in covered]
        if outside:
            raise SettingsError(f"the Fisher lacks {len(outside)} parameters of group {settings.group!r} (e.g. "
                                f"{outside[0]}): it covers group {workspace.settings.fisher_group!r}; give --group "
                                f"{workspace.settings.fisher_group} (or a subset of it), or --fisher-group "
                                f"{settings.group} --overwrite to recompute the Fisher")


def query_folder(query: Query, settings: UnlearnSettings) -> str:
    """queries/<query key>-<hash of the settings that change the unlearned weights>."""
    numbers = json.dumps(settings_key(settings, SCORE_ONLY), sort_keys=True).encode()
    return f"queries/{query.key}-{hashlib.sha256(numbers).hexdigest()[:8]}"


def _attribute_all(workspace: Workspace, queries: list[Query], settings: UnlearnSettings) -> list[dict]:
    """Each query's record (its folder holds its raw scores): the queries not yet scored are unlearned one by one,
    then all their losses after are computed in ONE sweep over the training rows (Workspace.losses_under)."""
    store = workspace.store
    folders = [query_folder(query, settings) for query in queries]
    todo = [q for q, folder in enumerate(folders) if not store.exists(f"{folder}/scores", ".npy")]  # same on every rank
    for q in sorted(set(range(len(queries))) - set(todo)):
        workspace.log(f"query {queries[q].key}: scores already in {folders[q]}, reused")
    records = {q: query_record(queries[q], folders[q], settings) for q in todo}

    workspace.on_main(lambda: [save_query(store, folders[q], queries[q], records[q]) for q in todo])
    if not todo:
        return [store.load_json(f"{folder}/query") for folder in folders]
    weights = workspace.phase("unlearn", lambda: [
        unlearned_weights(workspace, queries[q], settings, folders[q], records[q]) for q in todo])
    after = workspace.phase("score", lambda: workspace.losses_under(
        [f"{folders[q]}/losses_after" for q in todo], weights))
    base, rows = fit_base_losses(workspace), workspace.caption_rows  # on every rank: collective when not yet made

    def finish():
        for q, losses in zip(todo, after):
            store.save_npy(f"{folders[q]}/scores", loss_change_scores(base, losses, rows, len(workspace.dataset)))
            # one sweep scored every query: its time (and the unlearning's) is theirs together
            records[q]["timings_s"] = {"unlearn": workspace.timings["unlearn"], "score": workspace.timings["score"],
                                       "queries_in_sweep": len(todo)}
            store.save_json(f"{folders[q]}/query", records[q])
    workspace.on_main(finish)
    return [store.load_json(f"{folder}/query") for folder in folders]


def query_record(query: Query, folder: str, settings: UnlearnSettings) -> dict:
    """What a query's folder says about it (query.json), before its scores."""
    return {"folder": folder, "prompt": query.prompt, "source": query.source, "generation": query.generation,
            "unlearn": settings_key(settings, SCORE_ONLY),
            **({"mask": query.mask_source} if query.mask is not None else {})}


def save_query(store, folder: str, query: Query, record: dict) -> None:
    """The query image (and its mask: the region it was unlearnt in) and its record into its folder."""
    store.save_bytes(f"{folder}/query.png", query.png_bytes())
    if query.mask is not None:
        store.save_bytes(f"{folder}/mask.png", query.mask_png_bytes())
    store.save_json(f"{folder}/query", record)


def query_inputs(model, query: Query):
    """(x0 (1, C, h, w), its conditioning row, the region's latent weight (1, 1, h, w) or None) of a query."""
    x0 = model.encode_images(query.image[None])
    cond = model.encode_text([query.prompt])
    region = query.latent_weight(model.latent_shape[1:])  # None without a mask
    return x0, cond, None if region is None else torch.from_numpy(region)[None, None].to(x0.device)


def unlearned_weights(workspace: Workspace, query: Query, settings: UnlearnSettings, folder: str, record: dict
                       ) -> dict[str, torch.Tensor]:
    """The unlearned values of the changed group, computed by rank 0 and stored, so a resumed run does not unlearn
    again. Each step's scale (and the "rise" rule's achieved rise) goes into record["steps"]."""
    name = f"{folder}/unlearned"
    model, store = workspace.model, workspace.store
    if not store.exists(name, ".safetensors"):  # the same answer on every rank (after a barrier)
        divide_by = preconditioner(workspace, settings)  # on every rank: the curvature is a shared artefact
        retained = retained_rows(workspace, settings) if settings.retain else None

        def write():
            x0, cond, weight = query_inputs(model, query)
            with tqdm(total=settings.steps * settings.draws, desc=f"unlearn {query.key[:8]}", unit="draw",
                      disable=not workspace.progress) as bar:
                unet = unlearn(model, divide_by, x0, cond, settings, num_train=len(workspace.dataset), record=record,
                               retained=retained, weight=weight, on_draws=bar.update)
            changed = dict(unet.named_parameters())  # only the group differs from model.unet
            store.save_tensors(name, {n: changed[n].detach() for n in model.parameter_group(settings.group)},
                               metadata={"steps": json.dumps(record.get("steps", []))})
        workspace.on_main(write)
    tensors, metadata = store.load_tensors(name)
    if "steps" in metadata and "steps" not in record:  # a resumed query: the steps record written with the weights
        record["steps"] = json.loads(metadata["steps"])
    return {n: v.to(model.device) for n, v in tensors.items()}


def _scores(workspace: Workspace, query: Query, settings: UnlearnSettings, folder: str) -> np.ndarray:
    """The query's scores under settings.score (score_rules.py), from its raw scores or its stored losses."""
    store = workspace.store
    if settings.score == "raw":
        return store.load_npy(f"{folder}/scores")
    name = f"{folder}/scores-{settings.score}" + ("-spread" if settings.spread else "")
    if settings.score in REFERENCE_RULES:
        name += f"-{settings.references}"
    if not store.exists(name, ".npy"):  # the same answer on every rank (after a barrier)
        # read by every rank: both are collective passes under torchrun (complete here, so they only read)
        if settings.score == "normalised":
            after = workspace.losses(f"{folder}/losses_after")
            base, rows = fit_base_losses(workspace), workspace.caption_rows
        else:
            references = _reference_scores(workspace, settings)

        def write():
            if settings.score == "normalised":
                scores = loss_change_scores(base, after, rows, len(workspace.dataset), "normalised")
            elif settings.score == "sensitivity":
                scores = by_sensitivity(store.load_npy(f"{folder}/scores"), references)
            else:
                scores = calibrate(store.load_npy(f"{folder}/scores"), references, settings.spread)
            store.save_npy(name, scores)
        workspace.on_main(write)
    return store.load_npy(name)


def reference_queries(workspace: Workspace, count: int) -> list[Query]:
    """The calibrated score's reference queries: images the model generates from `count` training captions drawn
    with REFERENCE_SEED (each with its own seed), stored in the work directory so every query reuses them."""
    from ...query import query_from_array, query_from_prompt

    dataset, store = workspace.dataset, workspace.store
    captions = sorted({c for i in range(len(dataset)) for c in dataset.captions(i)})
    chosen = np.random.default_rng(REFERENCE_SEED).choice(len(captions), min(count, len(captions)), replace=False)
    names = [f"references/{n}-{hashlib.sha256(captions[k].encode()).hexdigest()[:8]}" for n, k in enumerate(chosen)]

    def write():
        for n, (k, name) in enumerate(zip(chosen, names)):
            if not store.exists(name, ".npy"):
                store.save_npy(name, query_from_prompt(workspace.model, captions[k], seed=REFERENCE_SEED + n).image)

    def make():
        workspace.on_main(write)
        return [query_from_array(store.load_npy(name), captions[k], workspace.model.resolution,
                                 source=f"reference query {n} (seed {REFERENCE_SEED + n})")
                for n, (k, name) in enumerate(zip(chosen, names))]
    return workspace.cached(f"references-{count}", make)


def _reference_scores(workspace: Workspace, settings: UnlearnSettings) -> np.ndarray:
    """(R, N) raw scores of the reference queries under the same unlearning settings (once per Workspace)."""
    raw = dataclasses.replace(settings, score="raw")
    key = json.dumps(settings_key(raw, SCORE_ONLY), sort_keys=True) + f"-{settings.references}"
    return workspace.cached(f"reference_scores-{key}", lambda: np.stack([
        workspace.store.load_npy(f"{record['folder']}/scores")
        for record in _attribute_all(workspace, reference_queries(workspace, settings.references), raw)]))


def preconditioner(workspace: Workspace, settings: UnlearnSettings):
    """What unlearning with `settings` divides by: the diagonal Fisher (damped per layer with "layer-damped"), or the
    K-FAC / EK-FAC curvature of the group's Linear layers with the diagonal Fisher for its other weights."""
    if settings.curvature == "diagonal" or not settings.precondition:
        return fit_fisher(workspace)
    if settings.curvature == "layer-damped":
        return layer_damped(fit_fisher(workspace), settings.curvature_damping)
    return dataclasses.replace(fit_curvature(workspace, settings.curvature, settings.curvature_damping),
                               diagonal=fit_fisher(workspace))


def retained_rows(workspace: Workspace, settings: UnlearnSettings):
    """step -> (x0, cond) of the settings.retain caption rows MUCS's descent uses at that step (seeded by the
    unlearning seed and the step, so the same for every query)."""
    rows = workspace.caption_rows
    count = min(settings.retain, len(rows))
    device = workspace.model.device

    def retained(step: int):
        picks = np.sort(np.random.default_rng([settings.seed, RETAIN_STREAM, step]).choice(len(rows), count,
                                                                                            replace=False))
        return rows_of(workspace.latents, rows[picks]).to(device), rows_of(workspace.conditioning, picks).to(device)
    return retained
