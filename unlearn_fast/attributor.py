"""The public entry point: Attributor.prepare() once per (model, data, settings), then .attribute(queries).

    prepare:    latents ─ text embeddings ─ Fisher ─ base losses L(z, θ0)      (work directory, once)
    attribute:  query ─ unlearn (Fisher-preconditioned ascent) ─ losses after ─ τ = after − before ─ rank

Every artefact lives in the work directory (store.WorkDir), bound to the CONTENT of its inputs (each model part's
weights, every training image's bytes, the captions) and the settings that change numbers; batch sizes and backends are
left out of that binding because they never change a result (tests/test_attributor.py checks it). Every setting is
checked before anything is recorded or computed. Long passes are chunked with a done-mask, so a killed run resumes;
the work directory's lock lets several commands share a folder, taking turns.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .attribution import Attribution
from .batching import MIN_UNET_ROWS
from .data.content import DigestCache, fingerprint_of
from .data.dataset import CaptionedImages, DataError, load_pixels
from .data.preprocess import POLICIES, PreprocessPlan
from .errors import SettingsError
from .fisher import FisherSettings, finish_fisher, fisher_metadata, fisher_sums
from .models.adapter import DiffusionModel
from .query import Query
from .score_rules import calibrate, loss_change_scores
from .scoring import LossGrid, per_example_losses
from .store import Binding, WorkDir, read_manifest, run_chunked
from .unlearn import UnlearnSettings, unlearn
from .weight_swap import swapped_weights

# Settings fields that change speed only: left out of the work directory's binding and of query keys.
_SPEED_ONLY = ("batch_size", "backend", "compile", "channels_last")
# Unlearning settings that change how scores are read from the losses, not the unlearned weights or the losses after:
# every score rule of one unlearning shares its query folder.
_SCORE_ONLY = ("score", "references", "spread")
# Settings added after work directories existed, left out of keys at the value that reproduces the older numbers, so
# those folders (and their query folders) stay valid.
_IMPLICIT = {"noise": "example", "step": "alpha/N", "curvature": "diagonal", "curvature_damping": 0.1, "cap": False,
             "retain": 0}
RETAIN_STREAM = 9173  # the stream of the retained rows' draw (UnlearnSettings.retain)
REFERENCE_SEED = 4242  # the calibrated score's reference queries: generations from captions drawn with this seed

# What each artefact is computed from (store.Binding.depends): --overwrite deletes only what a change invalidates.
# Artefacts not listed (queries/, attributions/) depend on everything.
DEPENDS = {
    "caption_rows": ("data.captions",),
    "text": ("data.captions", "model.text_encoder"),
    "text_truncated": ("data.captions", "model.text_encoder"),
    "latents": ("data.images", "model.vae", "settings.preprocess"),
    "fisher": ("model", "data", "settings.fisher", "settings.fisher_group", "settings.fisher_examples",
                           "settings.preprocess"),
    "fisher_parts": ("model", "data", "settings.fisher", "settings.fisher_group", "settings.fisher_examples",
                     "settings.preprocess"),
    "losses_base": ("model", "data", "settings.scoring", "settings.preprocess"),
    "curvature": ("model", "data", "settings.fisher", "settings.fisher_group", "settings.fisher_examples",
                  "settings.preprocess"),
}


def _numeric(settings, leave_out=()) -> dict:
    return {k: v for k, v in dataclasses.asdict(settings).items()
            if k not in _SPEED_ONLY and k not in leave_out and not (k in _IMPLICIT and v == _IMPLICIT[k])}


@dataclass(frozen=True)
class PrepareSettings:
    """What prepare computes. scoring: the loss grid used before AND after unlearning (so it is fixed per work
    directory). fisher_group: the parameters the Fisher covers (unlearning may use this group or a subset).
    fisher_examples: how many caption rows (a seeded random subset) the Fisher averages over; None = all.
    chunk_rows: caption rows per resumable chunk (speed and resume granularity only). preprocess: how training images
    that are not RGB at the model's resolution are treated (data/preprocess.py: "resize-crop" or "refuse")."""

    scoring: LossGrid = field(default_factory=LossGrid)
    fisher: FisherSettings = field(default_factory=FisherSettings)
    fisher_group: str = "kv"
    fisher_examples: int | None = None
    chunk_rows: int = 1024
    preprocess: str = "resize-crop"

    def manifest(self) -> dict:
        return {"scoring": _numeric(self.scoring), "fisher": _numeric(self.fisher), "fisher_group": self.fisher_group,
                "fisher_examples": self.fisher_examples, "preprocess": self.preprocess}

    def validate(self, model: DiffusionModel) -> None:
        """Every setting checked against the model before anything is computed or recorded (SettingsError)."""
        self.scoring.timestep_values(model.scheduler.config.num_train_timesteps)
        if self.fisher_examples is not None and (not isinstance(self.fisher_examples, int) or self.fisher_examples < 1):
            raise SettingsError(f"fisher_examples must be a number of rows >= 1, or None for every row (0 on the "
                                f"command line); got {self.fisher_examples!r}")
        if not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise SettingsError(f"chunk_rows must be >= 1, got {self.chunk_rows!r}")
        if self.preprocess not in POLICIES:
            raise SettingsError(f"preprocess must be one of {POLICIES}, got {self.preprocess!r}")
        model.parameter_group(self.fisher_group)

    @classmethod
    def recorded_in(cls, work_dir) -> "PrepareSettings | None":
        """The settings work_dir's manifest records (default batch sizes), or None for a new folder."""
        manifest = read_manifest(work_dir)
        return cls.from_manifest(manifest["settings"]) if manifest else None

    @classmethod
    def from_manifest(cls, numbers: dict, scoring_batch: int = 512, fisher_batch: int = 64) -> "PrepareSettings":
        """The settings a work directory was prepared with (its manifest), with the given batch sizes."""
        scoring = dict(numbers["scoring"])  # a missing "noise" is the implicit "example" (_IMPLICIT)
        if isinstance(scoring.get("timesteps"), list):
            scoring["timesteps"] = tuple(scoring["timesteps"])
        return cls(scoring=LossGrid(**scoring, batch_size=scoring_batch),
                   fisher=FisherSettings(**numbers["fisher"], batch_size=fisher_batch),
                   fisher_group=numbers["fisher_group"], fisher_examples=numbers["fisher_examples"],
                   preprocess=numbers.get("preprocess", "resize-crop"))


class Attributor:
    """Attribution by unlearning over one training set, for one model.

    >>> attributor = Attributor(DiffusionModel.load("default"), open_dataset("default"), "work")
    >>> attribution = attributor.prepare().attribute([query_from_prompt(attributor.model, "red apple")])
    >>> attribution.save("work/report")
    """

    def __init__(self, model: DiffusionModel, dataset: CaptionedImages, work_dir, settings: PrepareSettings = None,
                 *, overwrite: bool = False, progress: bool = True, digest_cache: DigestCache | None = None,
                 lock_timeout: float | None = None):
        """settings=None: those recorded in work_dir's manifest, or the defaults for a new folder. Settings are
        validated first (SettingsError); a folder prepared from other content (a changed image, caption or weight) or
        settings raises store.StoreMismatchError naming what differs and what overwrite=True would delete: exactly
        the artefacts those differences invalidate. digest_cache: where image digests are cached (data/content.py).
        lock_timeout: seconds to wait for another command working in the folder (None: as long as it takes)."""
        self.model = model.eval()
        self.dataset = dataset
        self.progress = progress
        if settings is None:  # reuse what the folder was prepared with
            settings = PrepareSettings.recorded_in(work_dir)
        self.settings = settings or PrepareSettings()
        self.settings.validate(model)  # before anything is read, computed or recorded
        self._model_fingerprints = model.fingerprints()
        self.store = WorkDir(work_dir, on_wait=self._waiting, lock_timeout=lock_timeout)
        self.timings: dict[str, float] = {}
        self._cache: dict[str, torch.Tensor | np.ndarray] = {}
        self._prepared = False
        binding = self._binding(digest_cache if digest_cache is not None else DigestCache())
        deleted = self.store.bind(binding, overwrite=overwrite)
        if deleted:
            self._log(f"--overwrite: deleted {', '.join(deleted)} (invalidated by the new inputs); the rest is kept")
        self._log(self._preprocess_plan.summary(dataset.where))

    def _binding(self, cache: DigestCache) -> Binding:
        """The work directory's binding: a fingerprint per model part, the images' bytes and the captions (rows kept to
        name the first differing file), and the settings. Images the preprocessing would change are known here."""
        started = time.perf_counter()
        content = self.dataset.content_index(cache)
        cache.close()
        self.timings["content_binding"] = round(time.perf_counter() - started, 3)
        self._preprocess_plan = plan = PreprocessPlan.of(content, self.model.resolution)
        if self.settings.preprocess == "refuse" and len(plan.changed):
            first = int(plan.changed[0])
            raise DataError(f"{self.dataset.where(first)}: {content['width'][first]}×{content['height'][first]} "
                            f"{content['mode'][first].decode()}, the model takes RGB "
                            f"{self.model.resolution}×{self.model.resolution} (preprocess 'refuse'; {len(plan.changed)} "
                            f"of {len(content)} images would change)")
        rows = {"data.images": content["digest"], "data.captions": self.dataset.caption_digests()}
        inputs = {f"model.{part}": value for part, value in self._model_fingerprints.items()}
        inputs.update({name: fingerprint_of(digests) for name, digests in rows.items()})
        return Binding(inputs=inputs, settings=self.settings.manifest(), rows=rows,
                       describe_row=lambda name, row: self.dataset.where(row), depends=DEPENDS)

    def _waiting(self, owner) -> None:
        print(f"[unlearn-fast] {self.store.path} is in use by {owner.describe()}: waiting for it to finish",
              file=sys.stderr)

    # ------------------------------------------------------------------------------------------------ prepare
    def prepare(self) -> "Attributor":
        """Compute (or resume) every per-model artefact; those already complete are skipped."""
        if not self._prepared:  # once per Attributor: later calls would only log 0 s phases over the real timings
            with self.store.locked():  # shared artefacts: one command at a time writes (or resumes) them
                self._phase("latents", lambda: self.latents)
                self._phase("text", lambda: self.conditioning)
                self._phase("fisher", lambda: self.fisher)
                self._phase("base_losses", lambda: self.base_losses)
            self._prepared = True
        return self

    def _phase(self, name: str, fn):
        started = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - started, 3)
        self._log(f"{name}: {self.timings[name]:.1f} s")
        return result

    def _log(self, line: str) -> None:
        with open(self.store.path / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.progress:
            print(f"[unlearn-fast] {line}", file=sys.stderr)

    def _cached(self, name: str, make):
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def caption_rows(self) -> np.ndarray:
        """Example index of each caption row: an image with k captions has k rows (scored separately, averaged)."""
        def make():
            if not self.store.exists("caption_rows", ".npy"):
                counts = [len(self.dataset.captions(i)) for i in range(len(self.dataset))]
                self.store.save_npy("caption_rows", np.repeat(np.arange(len(self.dataset)), counts))
            return self.store.load_npy("caption_rows")
        return self._cached("caption_rows", make)

    @property
    def latents(self) -> np.ndarray:
        """x0 (N, C, h, w) of every training image (VAE posterior mean × scaling factor, or pixels): a read-only
        memmap, so a training set larger than memory is read a chunk at a time (rows_of)."""
        def make():
            array = self.store.chunked("latents", (len(self.dataset), *self.model.latent_shape),
                                       self.settings.chunk_rows)

            def encode(start, stop):
                return self.model.encode_images(load_pixels(self.dataset, self.model.resolution, range(start, stop)))
            return run_chunked(array, encode, self.progress)
        return self._cached("latents", make)

    @property
    def conditioning(self) -> np.ndarray:
        """Text conditioning (R, L, D), one row per caption row (a read-only memmap)."""
        def make():
            rows = self.caption_rows
            captions = [c for i in range(len(self.dataset)) for c in self.dataset.captions(i)]
            shape = tuple(self.model.encode_text(captions[:1]).shape[1:])
            array = self.store.chunked("text", (len(rows), *shape), self.settings.chunk_rows)
            if not self.store.exists("text_truncated", ".json"):
                cut = self.model.truncated_prompts(captions)
                self.store.save_json("text_truncated", {"rows": cut, "max_tokens": self.model.text.max_tokens})
            cut = self.store.load_json("text_truncated")["rows"]
            if cut:
                first = int(rows[cut[0]])
                self._log(f"warning: {len(cut)} of {len(captions)} captions are longer than the text encoder's "
                          f"{self.model.text.max_tokens} tokens and are cut to it (first: {self.dataset.where(first)}: "
                          f"{captions[cut[0]][:80]!r})")
            return run_chunked(array, lambda a, b: self.model.encode_text(captions[a:b]), self.progress)
        return self._cached("text", make)

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """F + λ over the Fisher group: float64 sums per chunk of rows (resumable), then the mean."""
        def make():
            if self.store.exists("fisher", ".safetensors"):
                return self.store.load_tensors("fisher")[0]
            rows = self._fisher_rows()
            params = self.model.parameter_group(self.settings.fisher_group)
            # Chunks are whole blocks of MIN_UNET_ROWS rows, so F has the same bits for any chunking (batching.py).
            chunk = max(1, self.settings.chunk_rows // MIN_UNET_ROWS) * MIN_UNET_ROWS
            total = None
            for start in tqdm(range(0, len(rows), chunk), desc="fisher", unit="chunk", disable=not self.progress):
                part = self._fisher_part(params, rows[start:start + chunk])
                total = part if total is None else {n: total[n] + part[n] for n in part}
            fisher = finish_fisher(total, len(rows) * self.settings.fisher.samples_per_example,
                                   self.settings.fisher.damping)
            meta = {"group": self.settings.fisher_group, "rows": len(rows),
                    "model_fingerprint": self.model.fingerprint(self._model_fingerprints)}
            self.store.save_tensors("fisher", fisher, fisher_metadata(self.settings.fisher, meta))  # load_fisher reads it
            shutil.rmtree(self.store.artefact_path("fisher_parts"), ignore_errors=True)
            return fisher
        return self._cached("fisher", make)

    def _fisher_rows(self) -> np.ndarray:
        """The caption rows the Fisher (and the Kronecker curvature) average over: all, or a seeded subset."""
        rows = np.arange(len(self.caption_rows))
        chosen = self.settings.fisher_examples
        if chosen is not None and chosen < len(rows):  # a seeded subset: F is an expectation, not a sum
            rows = np.sort(np.random.default_rng(self.settings.fisher.seed).choice(rows, chosen, replace=False))
        return rows

    def curvature(self, kind: str, damping: float = 0.1):
        """K-FAC or EK-FAC factors (curvature.py) of the Fisher group's Linear layers over the Fisher's rows, stored
        in kronfluence's layout under curvature/<kind>/ (one safetensors file per factor name)."""
        from .curvature import FACTOR_NAMES, estimate_curvature, from_kronfluence, to_kronfluence

        def make():
            folder = f"curvature/{kind}"
            if not self.store.exists(f"{folder}/activation_eigenvectors", ".safetensors"):
                rows = self._fisher_rows()
                ids = self.caption_rows[rows]
                params = self.model.parameter_group(self.settings.fisher_group)
                estimated = estimate_curvature(self.model, params, rows_of(self.latents, ids),
                                               rows_of(self.conditioning, rows), ids, kind, self.settings.fisher)
                layout = to_kronfluence(estimated)
                for name in FACTOR_NAMES:  # the eigenvectors last: their file marks the artefact complete
                    if name in layout and name != "activation_eigenvectors":
                        self.store.save_tensors(f"{folder}/{name}", layout[name])
                self.store.save_tensors(f"{folder}/activation_eigenvectors", layout["activation_eigenvectors"])
            layout = {name: self.store.load_tensors(f"{folder}/{name}")[0] for name in FACTOR_NAMES
                      if self.store.exists(f"{folder}/{name}", ".safetensors")}
            return from_kronfluence(layout, kind)
        curvature = self._cached(f"curvature-{kind}", make)
        return dataclasses.replace(curvature, damping=damping)

    def _fisher_part(self, params, rows: np.ndarray) -> dict[str, torch.Tensor]:
        name = f"fisher_parts/{rows[0]}-{rows[-1]}-{len(rows)}"
        if self.store.exists(name, ".safetensors"):
            return self.store.load_tensors(name)[0]
        ids = self.caption_rows[rows]
        sums = fisher_sums(self.model, params, rows_of(self.latents, ids), rows_of(self.conditioning, rows), ids,
                           self.settings.fisher)
        sums = {n: value.cpu() for n, value in sums.items()}  # parts computed now and parts loaded add on the CPU
        self.store.save_tensors(name, sums)
        return sums

    def _losses(self, name: str) -> np.ndarray:
        """(R, T, F) losses of every caption row under model.unet's current weights, chunked and resumable."""
        grid = self.settings.scoring
        steps = len(grid.timestep_values(self.model.scheduler.config.num_train_timesteps))
        array = self.store.chunked(name, (len(self.caption_rows), steps, 2 if grid.flips else 1),
                                   self.settings.chunk_rows)
        rows, x0, cond = self.caption_rows, self.latents, self.conditioning

        def compute(start, stop):
            ids = rows[start:stop]
            return per_example_losses(self.model, rows_of(x0, ids), rows_of(cond, slice(start, stop)), ids, grid)
        return run_chunked(array, compute, self.progress)

    @property
    def base_losses(self) -> np.ndarray:
        """L(z, θ0): computed once per work directory and reused by every query."""
        return self._cached("base_losses", lambda: np.array(self._losses("losses_base")))

    # ---------------------------------------------------------------------------------------------- attribute
    def attribute(self, queries: list[Query] | Query, settings: UnlearnSettings = None) -> Attribution:
        """Scores (queries, N) for each query; every query's unlearned weights and losses are resumable artefacts."""
        queries = [queries] if isinstance(queries, Query) else list(queries)
        settings = settings or UnlearnSettings()
        self.check_unlearning(settings)
        for query in queries:
            if self.model.truncated_prompts([query.prompt]):
                self._log(f"warning: the query prompt {query.prompt[:80]!r} is longer than the text encoder's "
                          f"{self.model.text.max_tokens} tokens: it is cut to them, as the model read it when generating")
        with self.store.locked():
            self.prepare()
            scores, records = [], []
            for query in queries:
                record = self._attribute_one(query, settings)
                scores.append(self._scores(query, settings, record["folder"]))
                records.append({**record, "unlearn": dataclasses.asdict(settings)})
        return Attribution(scores=np.stack(scores), queries=queries, records=records, dataset=self.dataset,
                           work_dir=str(self.store.path), timings=dict(self.timings))

    def check_unlearning(self, settings: UnlearnSettings) -> None:
        """The unlearning settings checked against the model and the Fisher's group before any work (SettingsError)."""
        changed = self.model.parameter_group(settings.group)
        if settings.precondition:
            covered = self.model.parameter_group(self.settings.fisher_group)
            outside = [name for name in changed if name not in covered]
            if outside:
                raise SettingsError(f"the Fisher lacks {len(outside)} parameters of group {settings.group!r} (e.g. "
                                    f"{outside[0]}): it covers group {self.settings.fisher_group!r}; unlearn a subset "
                                    "of it, or prepare another work directory with --fisher-group")

    def write_outputs(self, attribution: Attribution, out: str | None = None, top_k: int = 16) -> dict[str, str]:
        """attribution.save into `out`, by default the work directory's own folder for these queries
        (attributions/<id>/, listed in attributions/index.json with attributions/latest pointing at the newest)."""
        from .outputs import output_id, record_output

        with self.store.locked():
            folder = out or str(self.store.artefact_path(f"attributions/{output_id(attribution.records)}"))
            paths = attribution.save(folder, top_k=top_k)
            record_output(self.store.path, folder, attribution)
        return paths

    def _query_folder(self, query: Query, settings: UnlearnSettings) -> str:
        numbers = json.dumps(_numeric(settings, _SCORE_ONLY), sort_keys=True).encode()
        return f"queries/{query.key}-{hashlib.sha256(numbers).hexdigest()[:8]}"

    def _scores(self, query: Query, settings: UnlearnSettings, folder: str) -> np.ndarray:
        """The query's scores under settings.score (score_rules.py), from its raw scores or its stored losses."""
        if settings.score == "raw":
            return self.store.load_npy(f"{folder}/scores")
        name = f"{folder}/scores-{settings.score}" + ("-spread" if settings.spread else "")
        if settings.score == "calibrated":
            name += f"-{settings.references}"
        if not self.store.exists(name, ".npy"):
            if settings.score == "normalised":
                after = self._losses(f"{folder}/losses_after")  # complete: _attribute_one computed it
                scores = loss_change_scores(self.base_losses, after, self.caption_rows, len(self.dataset),
                                            "normalised")
            else:
                scores = calibrate(self.store.load_npy(f"{folder}/scores"), self._reference_scores(settings),
                                   settings.spread)
            self.store.save_npy(name, scores)
        return self.store.load_npy(name)

    def reference_queries(self, count: int) -> list[Query]:
        """The calibrated score's reference queries: images the model generates from `count` training captions drawn
        with REFERENCE_SEED (each with its own seed), stored in the work directory so every query reuses them."""
        from .query import query_from_array, query_from_prompt

        def make():
            captions = sorted({c for i in range(len(self.dataset)) for c in self.dataset.captions(i)})
            chosen = np.random.default_rng(REFERENCE_SEED).choice(len(captions), min(count, len(captions)),
                                                                  replace=False)
            queries = []
            for n, k in enumerate(chosen):
                name = f"references/{n}-{hashlib.sha256(captions[k].encode()).hexdigest()[:8]}"
                if not self.store.exists(name, ".npy"):
                    query = query_from_prompt(self.model, captions[k], seed=REFERENCE_SEED + n)
                    self.store.save_npy(name, query.image)
                queries.append(query_from_array(self.store.load_npy(name), captions[k], self.model.resolution,
                                                source=f"reference query {n} (seed {REFERENCE_SEED + n})"))
            return queries
        return self._cached(f"references-{count}", make)

    def _reference_scores(self, settings: UnlearnSettings) -> np.ndarray:
        """(R, N) raw scores of the reference queries under the same unlearning settings (once per Attributor)."""
        raw = dataclasses.replace(settings, score="raw")
        key = json.dumps(_numeric(raw, _SCORE_ONLY), sort_keys=True) + f"-{settings.references}"
        return self._cached(f"reference_scores-{key}", lambda: np.stack([
            self.store.load_npy(f"{self._attribute_one(q, raw)['folder']}/scores")
            for q in self.reference_queries(settings.references)]))

    def _attribute_one(self, query: Query, settings: UnlearnSettings) -> dict:
        folder = self._query_folder(query, settings)
        record = {"folder": folder, "prompt": query.prompt, "source": query.source, "generation": query.generation,
                  "unlearn": _numeric(settings, _SCORE_ONLY)}
        if self.store.exists(f"{folder}/scores", ".npy"):
            self._log(f"query {query.key}: scores already in {folder}, reused")
            return self.store.load_json(f"{folder}/query")
        path = self.store.artefact_path(f"{folder}/query", ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(query.png_bytes())
        self.store.save_json(f"{folder}/query", record)
        weights = self._phase("unlearn", lambda: self._unlearned_weights(query, settings, folder, record))
        with swapped_weights(self.model.unet, weights):  # one UNet (and one compiled graph) before and after
            after = self._phase("score", lambda: self._losses(f"{folder}/losses_after"))
        scores = loss_change_scores(self.base_losses, after, self.caption_rows, len(self.dataset))
        self.store.save_npy(f"{folder}/scores", scores)
        record["timings_s"] = {k: self.timings[k] for k in ("unlearn", "score")}
        self.store.save_json(f"{folder}/query", record)
        return record

    def _unlearned_weights(self, query: Query, settings: UnlearnSettings, folder: str, record: dict
                           ) -> dict[str, torch.Tensor]:
        """The unlearned values of the changed group; stored, so a resumed run does not unlearn again. Each step's
        scale (and the "rise" rule's achieved rise) goes into record["steps"]."""
        name = f"{folder}/unlearned"
        if self.store.exists(name, ".safetensors"):
            return self.store.load_tensors(name)[0]
        x0 = self.model.encode_images(query.image[None])
        cond = self.model.encode_text([query.prompt])
        unet = unlearn(self.model, self.preconditioner(settings), x0, cond, settings, num_train=len(self.dataset),
                       record=record, retained=self.retained_rows(settings) if settings.retain else None)
        changed = dict(unet.named_parameters())  # only the group differs from model.unet
        weights = {n: changed[n].detach() for n in self.model.parameter_group(settings.group)}
        self.store.save_tensors(name, weights)
        return weights

    def preconditioner(self, settings: UnlearnSettings):
        """What unlearning with `settings` divides by: the diagonal Fisher, or the K-FAC / EK-FAC curvature."""
        if settings.curvature == "diagonal" or not settings.precondition:
            return self.fisher
        return self.curvature(settings.curvature, settings.curvature_damping)

    def retained_rows(self, settings: UnlearnSettings):
        """step -> (x0, cond) of the settings.retain caption rows MUCS's descent uses at that step (seeded by the
        unlearning seed and the step, so the same for every query)."""
        rows = self.caption_rows
        count = min(settings.retain, len(rows))

        def retained(step: int):
            picks = np.sort(np.random.default_rng([settings.seed, RETAIN_STREAM, step]).choice(len(rows), count,
                                                                                                replace=False))
            return rows_of(self.latents, rows[picks]).to(self.model.device), \
                rows_of(self.conditioning, picks).to(self.model.device)
        return retained


def rows_of(array: np.ndarray, index) -> torch.Tensor:
    """Some rows of a (memmapped) array as a tensor: only those rows are read."""
    return torch.from_numpy(np.array(array[index]))  # a writable copy of just these rows
