"""The Workspace: what every attribution method stands on, once per (model, training set, settings).

    model + data ─ binding (content of weights, images, captions; settings) ─ work directory
                 ─ caption rows ─ latents x0 ─ text conditioning      (prepare: every method stands on these)
                 ─ each method's own artefacts (AttributionMethod.prepare: AbU's Fisher and base losses, methods/abu/)

Every artefact lives in the work directory (store.WorkDir), bound to the CONTENT of its inputs and the settings that
change numbers; batch sizes and backends are left out of that binding because they never change a result. Every
setting is checked before anything is recorded or computed. Long passes are chunked with a done mark per chunk, so a
killed run resumes; the work directory's lock lets several commands share a folder, taking turns.

Under torchrun the ranks share one Workspace: each long pass splits its pending chunks over them (distributed.Ranks),
each rank writes the chunks it computed, and rank 0 alone binds the folder, holds its lock, logs, shows each pass's
progress bar (over the whole pass: engine/progress.py), and writes what is shared. Methods (methods/) read the Workspace and never the Attributor, the thin facade over it (attributor.py).
"""
from __future__ import annotations

import dataclasses

import contextlib
import os
import sys
import time

import numpy as np
import torch
from .data.content import DATA_INPUTS, DigestCache, data_fingerprints
from .data.dataset import CaptionedImages, DataError, load_pixels
from .data.preprocess import PreprocessPlan
from .engine.batching import MIN_UNET_ROWS
from .engine.distributed import Ranks, ranks_from_environment
from .engine.progress import shared_progress
from .engine.scoring import losses_under_weights
from .errors import NotPreparedError
from .models.adapter import DiffusionModel
from .prepare_settings import PrepareSettings
from .store import Binding, WorkDir, read_manifest

# What each artefact is computed from (store.Binding.depends): --overwrite deletes only what a change invalidates.
# Artefacts not listed (queries/, attributions/) depend on everything.
_FISHER_INPUTS = ("model", "data", "settings.fisher", "settings.fisher_group", "settings.fisher_examples",
                  "settings.preprocess", "settings.resolution")
DEPENDS = {
    "caption_rows": ("data.captions",),
    "text": ("data.captions", "model.text_encoder", "settings.resolution"),  # SDXL's time ids state the side
    "text_truncated": ("data.captions", "model.text_encoder"),
    "latents": ("data.images", "model.vae", "settings.preprocess", "settings.resolution"),
    "fisher": _FISHER_INPUTS,
    "fisher_parts": _FISHER_INPUTS,
    "losses_base": ("model", "data", "settings.scoring", "settings.preprocess", "settings.resolution"),
    "curvature": _FISHER_INPUTS,
    "curvature_parts": _FISHER_INPUTS,
}


def rows_of(array: np.ndarray, index) -> torch.Tensor:
    """Some rows of a (memmapped) array as a tensor: only those rows are read."""
    return torch.from_numpy(np.array(array[index]))  # a writable copy of just these rows


class Workspace:
    """One model and one training set in one work directory: the shared artefacts every method reads.

    >>> workspace = Workspace(DiffusionModel.load("default"), open_dataset("default"), "work").prepare()
    >>> workspace.latents.shape, workspace.conditioning.shape, len(workspace.caption_rows)
    """

    def __init__(self, model: DiffusionModel, dataset: CaptionedImages, work_dir, settings: PrepareSettings = None,
                 *, overwrite: bool = False, progress: bool = True, digest_cache: DigestCache | None = None,
                 lock_timeout: float | None = None, ranks: Ranks | None = None):
        """settings=None: those recorded in work_dir's manifest, or the defaults for a new folder. Settings are
        validated first (SettingsError); a folder prepared from other content (a changed image, caption or weight) or
        settings raises store.StoreMismatchError naming what differs and what overwrite=True would delete: exactly
        the artefacts those differences invalidate. digest_cache: where image digests are cached (data/content.py).
        lock_timeout: seconds to wait for another command working in the folder (None: as long as it takes).
        ranks: the job's processes (default: those torchrun set up, or this process alone)."""
        self.model = model.eval()
        self.dataset = dataset
        self.ranks = ranks if ranks is not None else ranks_from_environment()
        self.progress = progress and self.ranks.is_main
        if settings is None:  # reuse what the folder was prepared with
            settings = PrepareSettings.recorded_in(work_dir)
        self.settings = settings or PrepareSettings()
        self.settings.validate(model)  # before anything is read, computed or recorded
        if self.settings.resolution == model.native_resolution:  # the model's own side: the numbers of none given
            self.settings = dataclasses.replace(self.settings, resolution=None)
        # The binding's model is the model as saved; the side it is run at is the setting (settings.resolution).
        self.model_fingerprints = model.use_resolution(None).fingerprints()
        model.use_resolution(self.settings.resolution)  # the images' side: latents, text, queries follow it
        self.store = WorkDir(work_dir, on_wait=self._waiting, lock_timeout=lock_timeout)
        self.timings: dict[str, float] = {}
        self.chunks_by_rank: dict[str, list[list[int]]] = {}  # pass -> the chunk indices each rank computed
        self._cache: dict[str, object] = {}
        if self.ranks.is_main:  # one process binds the folder; the others wait for it, then use what it recorded
            binding = self._binding(digest_cache if digest_cache is not None else DigestCache())
            deleted = self.store.bind(binding, overwrite=overwrite)
            if deleted:
                self.log(f"--overwrite: deleted {', '.join(deleted)} (invalidated by the new inputs); the rest is kept")
            self.log(self._preprocess_plan.summary(dataset.where))
            if self.ranks.active:
                self.log(f"{self.ranks.world_size} ranks (torch.distributed)")
        self.ranks.barrier()
        if not self.ranks.is_main:  # what rank 0 bound, so locked() can tell a rebinding
            self.store.manifest = read_manifest(self.store.path)

    def data_fingerprint(self) -> dict:
        """The training set's fingerprints this folder is bound to (what an attribution records: attribution.py)."""
        inputs = (self.store.manifest or read_manifest(self.store.path) or {}).get("inputs", {})
        return {name: inputs[name] for name in DATA_INPUTS if name in inputs} or None

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
        rows = dict(zip(DATA_INPUTS, (content["digest"], self.dataset.caption_digests())))
        inputs = {f"model.{part}": value for part, value in self.model_fingerprints.items()}
        inputs.update(data_fingerprints(*rows.values()))
        return Binding(inputs=inputs, settings=self.settings.manifest(), rows=rows,
                       describe_row=lambda name, row: self.dataset.where(row), depends=DEPENDS,
                       sources=self.sources())

    def sources(self) -> dict:
        """Where the model and the data were read from: recorded in the manifest, so that a later command on this
        folder can omit --model / --data / --lora (cli), never compared (content binds the folder, not names)."""
        folder, config = getattr(self.model, "folder", None), getattr(self.model, "model_config", None)
        data = getattr(self.dataset, "reopen_args", None) or {}
        return {"model": folder if folder in (None, "default") else os.path.abspath(folder),
                "variant": getattr(self.model, "variant", None),
                "model_config": os.path.abspath(config) if config else None,
                "lora": getattr(self.model, "lora", None), "data": data.get("spec"),
                "caption_column": data.get("caption_column"), "image_column": data.get("image_column"),
                "subset": data.get("subset"), "base_model": getattr(self.model, "base_model", None)}

    def _waiting(self, owner) -> None:
        print(f"[unlearn-fast] {self.store.lock.waiting_message(owner)}", file=sys.stderr)

    # ---------------------------------------------------------------------------------------- shared plumbing
    @contextlib.contextmanager
    def locked(self):
        """The work directory's lock for the whole job: rank 0 holds it (the other ranks are its helpers)."""
        with self.store.locked() if self.ranks.is_main else contextlib.nullcontext():
            self.ranks.barrier()  # no rank starts before rank 0 holds the lock
            yield self

    def on_main(self, write) -> None:
        """Run write() on rank 0 only, then wait until it is done: for every file the ranks share."""
        if self.ranks.is_main:
            write()
        self.ranks.barrier()

    def log(self, line: str) -> None:
        if not self.ranks.is_main:
            return
        with open(self.store.path / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.progress:
            print(f"[unlearn-fast] {line}", file=sys.stderr)

    def phase(self, name: str, fn):
        started = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - started, 3)
        self.log(f"{name}: {self.timings[name]:.1f} s")
        return result

    def cached(self, name: str, make):
        """make() once per Workspace (artefacts read back from the work directory are kept in memory)."""
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    def chunked_pass(self, name: str, shape: tuple[int, ...], compute, dtype: str = "float32") -> np.ndarray:
        """The (read-only memmap) array `name` of `shape`, its missing chunks of rows filled with compute(start, stop)
        and split over the ranks; a killed run (of any world size) resumes with only the missing chunks. dtype:
        "float32" or "float16" (store.chunked.DTYPES)."""
        return self.chunked_passes([name], shape, lambda start, stop, which: compute(start, stop)[None], dtype)[0]

    def chunked_passes(self, names: list[str], shape: tuple[int, ...], compute, dtype: str = "float32"
                       ) -> list[np.ndarray]:
        """chunked_pass for several arrays of one shape filled in one sweep over the rows: compute(start, stop, which)
        returns the chunk of the arrays names[q] for q in `which` (those still missing it), stacked."""
        shape = tuple(int(s) for s in shape)
        if self.ranks.is_main:  # created by one process, then opened by the others
            arrays = [self.store.chunked(name, shape, self.settings.chunk_rows, dtype) for name in names]
        self.ranks.barrier()
        if not self.ranks.is_main:
            arrays = [self.store.chunked(name, shape, self.settings.chunk_rows, dtype) for name in names]
        pending = self.ranks.broadcast([array.pending_chunks() for array in arrays] if self.ranks.is_main else None)
        pending = [set(missing) for missing in pending]
        sweep = sorted(set().union(*pending))
        mine = self.ranks.share(sweep)
        desc = names[0] if len(names) == 1 else f"{len(names)} arrays"
        for start, stop in shared_progress(self.ranks, mine, len(sweep), desc, enabled=self.progress):
            which = [q for q, missing in enumerate(pending) if (start, stop) in missing]
            values = compute(start, stop, which)
            for q, value in zip(which, values):
                arrays[q].write_chunk(start, stop, value)
        for name, array, missing in zip(names, arrays, pending):
            self._record_chunks(name, [start // array.chunk_rows for start, stop in mine if (start, stop) in missing])

        def consolidate():
            for array in arrays:
                array.consolidate()
        self.on_main(consolidate)
        return [array.read() for array in arrays]

    def _record_chunks(self, name: str, mine: list[int]) -> None:
        by_rank = self.ranks.gather(mine)
        if any(by_rank):
            self.chunks_by_rank[name] = by_rank
            if self.ranks.active:
                self.log(f"{name}: chunks by rank " + "; ".join(f"{r}: {c}" for r, c in enumerate(by_rank)))

    # ----------------------------------------------------------------------------------------------- prepare
    def prepare(self, methods=()) -> "Workspace":
        """Compute (or resume) what every method stands on (caption rows, latents, text conditioning), then what each
        of `methods` needs beyond it (AttributionMethod.prepare: AbU's Fisher and base losses); artefacts already
        complete are read back. Every rank calls it (its passes are split over the ranks)."""
        with self.locked():  # shared artefacts: one command at a time writes (or resumes) them
            self.cached("caption_rows", self._caption_rows)
            self.once("latents", self._latents)
            self.once("text", self._conditioning)
            for method in methods:
                method.prepare(self)
        return self

    def once(self, name: str, make):
        """make() as the phase `name` (timed and logged) once per Workspace; its result kept as the artefact `name`."""
        if name not in self._cache:
            self._cache[name] = self.phase(name, make)
        return self._cache[name]

    def prepared(self, name: str):
        """The artefact `name` made by prepare(); a NotPreparedError before it (reading never starts a computation)."""
        if name not in self._cache:
            raise NotPreparedError(f"the work directory {self.store.path}: {name} is read before prepare() made it; "
                                   "call workspace.prepare() (or Attributor.prepare()) first")
        return self._cache[name]

    @property
    def caption_rows(self) -> np.ndarray:
        """Example index of each caption row: an image with k captions has k rows (scored separately, averaged)."""
        return self.prepared("caption_rows")

    def _caption_rows(self) -> np.ndarray:
        def write():
            if not self.store.exists("caption_rows", ".npy"):
                n = len(self.dataset)
                counts = np.fromiter((len(self.dataset.captions(i)) for i in range(n)), np.int64, n)
                self.store.save_npy("caption_rows", np.repeat(np.arange(n), counts))
        self.on_main(write)
        return self.store.load_npy("caption_rows")

    def row_captions(self, start: int, stop: int) -> list[str]:
        """The captions of caption rows [start, stop) (read from the data set, never all at once)."""
        rows = self.caption_rows
        images = rows[start:stop]
        firsts = np.searchsorted(rows, images)  # the first row of each image: rows are sorted by image
        return [self.dataset.captions(int(i))[r - int(f)] for r, i, f in zip(range(start, stop), images, firsts)]

    @property
    def latents(self) -> np.ndarray:
        """x0 (N, C, h, w) of every training image (VAE posterior mean × scaling factor, or pixels): a read-only
        memmap, so a training set larger than memory is read a chunk at a time (rows_of)."""
        return self.prepared("latents")

    def _latents(self) -> np.ndarray:
        def encode(start, stop):
            return self.model.encode_images(load_pixels(self.dataset, self.model.resolution, range(start, stop)))
        return self.chunked_pass("latents", (len(self.dataset), *self.model.latent_shape), encode)

    @property
    def conditioning(self) -> np.ndarray:
        """Text conditioning (R, L, D), one row per caption row (a read-only memmap)."""
        return self.prepared("text")

    def _conditioning(self) -> np.ndarray:
        rows = self.caption_rows
        shape = tuple(self.model.encode_text(self.row_captions(0, 1)).shape[1:])
        block = max(self.settings.chunk_rows, 4096)

        def write():
            if not self.store.exists("text_truncated", ".json"):
                cut = [start + k for start in range(0, len(rows), block)
                       for k in self.model.truncated_prompts(self.row_captions(start, start + block))]
                self.store.save_json("text_truncated", {"rows": cut, "max_tokens": self.model.text.max_tokens})
        self.on_main(write)
        cut = self.store.load_json("text_truncated")["rows"]
        if cut:
            first = int(rows[cut[0]])
            self.log(f"warning: {len(cut)} of {len(rows)} captions are longer than the text encoder's "
                     f"{self.model.text.max_tokens} tokens and are cut to it (first: {self.dataset.where(first)}: "
                     f"{self.row_captions(cut[0], cut[0] + 1)[0][:80]!r})")
        return self.chunked_pass("text", (len(rows), *shape),
                                 lambda a, b: self.model.encode_text(self.row_captions(a, b)))

    def summed_pass(self, folder: str, desc: str, rows: np.ndarray, compute) -> list[str]:
        """A resumable pass of sums over the caption rows `rows` (sorted): compute(x0, cond, example_ids) ->
        {name: tensor} for each chunk of rows that has no saved part yet, split over the ranks, each part saved as
        folder/<first>-<last>-<n> when it finishes. Returns every part's name in a fixed order (whichever rank
        computed it), once all exist. Chunks are whole blocks of MIN_UNET_ROWS rows: sums of per-row terms have the
        same bits for any chunking (batching.py)."""
        size = max(1, self.settings.chunk_rows // MIN_UNET_ROWS) * MIN_UNET_ROWS
        chunks = [rows[start:start + size] for start in range(0, len(rows), size)]
        names = [f"{folder}/{chunk[0]}-{chunk[-1]}-{len(chunk)}" for chunk in chunks]
        pending = self.ranks.broadcast([k for k, name in enumerate(names) if not self.store.exists(
            name, ".safetensors")] if self.ranks.is_main else None)
        mine = self.ranks.share(pending)
        for k in shared_progress(self.ranks, mine, len(pending), desc, enabled=self.progress):
            ids = self.caption_rows[chunks[k]]
            self.store.save_tensors(names[k], compute(rows_of(self.latents, ids), rows_of(self.conditioning, chunks[k]),
                                                      ids))
        self._record_chunks(desc, mine)  # gathers over the ranks: every part exists after it
        return names

    def losses(self, name: str) -> np.ndarray:
        """(R, T, F) losses of every caption row under model.unet's current weights, chunked, resumable and split
        over the ranks."""
        return self.losses_under([name], [{}])[0]

    def losses_under(self, names: list[str], weight_sets: list[dict[str, torch.Tensor]]) -> list[np.ndarray]:
        """The losses of every caption row under each set of weights (swapped into model.unet; {} = its own), into
        the arrays `names`, in ONE sweep over the rows: each chunk is read, moved and noised once for all of them."""
        grid = self.settings.scoring
        steps = len(grid.timestep_values(self.model.num_timesteps))
        rows, x0, cond = self.caption_rows, self.latents, self.conditioning

        def compute(start, stop, which):
            ids = rows[start:stop]
            return losses_under_weights(self.model, rows_of(x0, ids), rows_of(cond, slice(start, stop)), ids, grid,
                                        [weight_sets[q] for q in which])
        return self.chunked_passes(names, (len(rows), steps, 2 if grid.flips else 1), compute)

    def losses_of_rows(self, weights: dict[str, torch.Tensor], rows: np.ndarray) -> np.ndarray:
        """(len(rows), T, F) losses of the caption rows `rows` (sorted indices) under `weights`, not stored: the
        two-stage AbU rescores its candidates only. Blocks of chunk_rows rows (split over the ranks, gathered in
        order); with rows = every row the blocks are losses_under's chunks, so the numbers are its bits."""
        grid, rows = self.settings.scoring, np.asarray(rows, np.int64)
        example, x0, cond = self.caption_rows, self.latents, self.conditioning
        size = self.settings.chunk_rows
        blocks = [(start, min(start + size, len(rows))) for start in range(0, len(rows), size)]
        mine = {}
        for start, stop in shared_progress(self.ranks, self.ranks.share(blocks), len(blocks), "rescore candidates",
                                           enabled=self.progress):
            picked = rows[start:stop]
            ids = example[picked]
            mine[start] = losses_under_weights(self.model, rows_of(x0, ids), rows_of(cond, picked), ids, grid,
                                               [weights])[0].cpu().numpy()
        parts = {}
        for part in self.ranks.gather(mine):
            parts.update(part)
        steps = len(grid.timestep_values(self.model.num_timesteps))
        empty = np.zeros((0, steps, 2 if grid.flips else 1), np.float32)
        return np.concatenate([parts[start] for start, _ in blocks]) if blocks else empty
