"""AbU as a dattri 0.3 attributor: dattri's calls (construct, cache, attribute), unlearn_fast's scores.

    from unlearn_fast.attributor import Attributor
    from unlearn_fast.interop.dattri import AbUAttributor, training_loader, query_loader

    attributor = Attributor(model, dataset, "work")                  # the model, its training set, a work directory
    abu = AbUAttributor(attributor, UnlearnSettings())
    abu.cache(training_loader(attributor))                           # AbU's Fisher and losses before unlearning
    scores = abu.attribute(training_loader(attributor), query_loader(images, prompts))   # (num_train, num_test)

AbU needs no dattri AttributionTask: its loss is the model's own denoising objective, and what it stands on (the
latents, the text conditioning, the Fisher, the base losses) is bound to the Attributor's training set in its work
directory. So the loaders name rows of that set rather than carry tensors to differentiate:

    train loader   batches of training-row indices of the Attributor's training set (an integer tensor, or a
                   tuple / list whose first element is one, or a dict with "index"), in any order; the result's rows
                   follow the loader. A subset of the rows gives their rows of the whole set's scores (AbU rescores
                   every training image whichever are asked for). training_loader builds one (TrainingRows).
    test loader    batches of queries: (images, prompts) with images uint8 (B, H, W, 3) at the model's resolution and
                   prompts a list of strings (what a Dataset of (image, prompt) pairs collates to), or lists of
                   unlearn_fast Query objects (query_loader(queries)). The result's columns follow the loader.

The result is dattri's layout: float32 (num_train, num_test), higher = more responsible; bit for bit the transpose of
Attributor.attribute(queries, settings).scores, which is kept as .attribution (for its report, ranking, outputs).
Anything that cannot be mapped (images in the train loader, float query images, rows outside the set) is refused
before any work, naming the batch and what it holds.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from dattri.algorithm.base import BaseAttributor
from torch.utils.data import DataLoader, Dataset

from ..attribution import Attribution
from ..attributor import Attributor
from ..engine.unlearn import UnlearnSettings
from ..errors import UserInputError
from ..query import Query, query_from_array

__all__ = ["AbUAttributor", "LoaderError", "QueryImages", "TrainingRows", "query_loader", "training_loader"]


class LoaderError(UserInputError):
    """A dattri dataloader whose batches do not name rows of the training set, or queries."""


class TrainingRows(Dataset):
    """The rows of a training set of `size` images: item i is i (batches collate to an int64 tensor of indices)."""

    def __init__(self, size: int):
        self.size = int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return int(range(self.size)[index])


class QueryImages(Dataset):
    """(image, prompt) pairs: item i is (uint8 tensor (H, W, 3), prompt), batches collate to (images, prompts)."""

    def __init__(self, images, prompts: Sequence[str]):
        if len(images) != len(prompts):
            raise LoaderError(f"{len(images)} query images for {len(prompts)} prompts")
        self.images, self.prompts = images, list(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int):
        return torch.as_tensor(np.asarray(self.images[index])), self.prompts[index]


def training_loader(attributor: Attributor, batch_size: int = 256) -> DataLoader:
    """A dataloader over every row of the Attributor's training set, in order (dattri's full train loader)."""
    return DataLoader(TrainingRows(len(attributor.dataset)), batch_size=batch_size, shuffle=False)


def query_loader(images_or_queries, prompts: Sequence[str] | None = None, batch_size: int = 16) -> DataLoader:
    """A test dataloader: of Query objects (prompts None), or of uint8 (H, W, 3) images with their prompts."""
    if prompts is None:
        queries = list(images_or_queries)
        return DataLoader(queries, batch_size=batch_size, shuffle=False, collate_fn=list)
    return DataLoader(QueryImages(images_or_queries, prompts), batch_size=batch_size, shuffle=False)


class AbUAttributor(BaseAttributor):
    """Attribution by unlearning behind dattri's attributor interface (BaseAttributor)."""

    def __init__(self, attributor: Attributor, settings: UnlearnSettings | None = None, task=None,
                 candidates=None, device: str = "cpu") -> None:
        """attributor: unlearn_fast's, bound to the model, its training set and a work directory. settings: the
        unlearning (UnlearnSettings(); a recipe's: methods.abu.recipes). task: must be None: a dattri AttributionTask
        cannot say what AbU needs (its loss is the model's own objective, its artefacts the work directory's).
        candidates: Attributor.attribute's (None: every image rescored). device: where the returned tensor lives."""
        if task is not None:
            raise LoaderError("AbUAttributor takes no dattri AttributionTask: AbU's loss is the model's own denoising "
                              "objective; pass an unlearn_fast Attributor (model, training set, work directory)")
        if not isinstance(attributor, Attributor):
            raise LoaderError(f"AbUAttributor needs an unlearn_fast.attributor.Attributor, got "
                              f"{type(attributor).__name__}")
        self.attributor = attributor
        self.settings = settings or UnlearnSettings()
        self.candidates = candidates
        self.device = device
        self.attribution: Attribution | None = None
        attributor.check_unlearning(self.settings)

    def cache(self, full_train_dataloader: DataLoader | None = None) -> None:
        """Prepare what every query stands on (latents, text conditioning, the Fisher, the losses before unlearning;
        resumable, kept in the work directory). full_train_dataloader, if given, must name every training row once:
        AbU's Fisher and base losses are the whole training set's."""
        if full_train_dataloader is not None:
            rows = loader_rows(full_train_dataloader, len(self.attributor.dataset))
            if len(rows) != len(self.attributor.dataset) or len(np.unique(rows)) != len(rows):
                raise LoaderError(f"the full train loader names {len(np.unique(rows))} distinct rows of "
                                  f"{len(rows)}; the training set has {len(self.attributor.dataset)}: give every row "
                                  "once (training_loader(attributor))")
        self.attributor.prepare()

    def attribute(self, train_dataloader: DataLoader, test_dataloader: DataLoader) -> torch.Tensor:
        """AbU scores (len(train rows), num_test) float32: the training rows the train loader names, for the queries
        the test loader yields, in the loaders' orders."""
        rows = loader_rows(train_dataloader, len(self.attributor.dataset))
        queries = loader_queries(test_dataloader, self.attributor.model.resolution)
        self.attribution = self.attributor.attribute(queries, self.settings, candidates=self.candidates)
        scores = torch.from_numpy(self.attribution.scores)  # (queries, N) float32
        return scores[:, torch.from_numpy(rows)].T.contiguous().to(self.device)


def _first(batch, index: int, what: str):
    """The tensor a batch carries first: itself, the first element of a tuple / list, or a dict's "index"."""
    if isinstance(batch, Mapping):
        if "index" not in batch:
            raise LoaderError(f"{what} batch {index} is a dict without 'index' (keys {sorted(batch)[:5]})")
        return batch["index"]
    if isinstance(batch, (tuple, list)) and batch and not isinstance(batch[0], (int, np.integer)):
        return batch[0]
    return batch


def loader_rows(loader: DataLoader, size: int) -> np.ndarray:
    """The training-row indices a train loader's batches name, in order (int64); refused unless each batch is (or
    starts with) a 1-D integer tensor of indices in [0, size)."""
    rows = []
    for index, batch in enumerate(loader):
        values = torch.as_tensor(_first(batch, index, "train"))
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool or values.ndim > 1:
            raise LoaderError(f"train batch {index} holds a {values.dtype} tensor of shape {tuple(values.shape)}: "
                              "AbU scores rows of the Attributor's training set; give a loader of training-row "
                              "indices (training_loader(attributor), or a Subset of TrainingRows)")
        values = values.reshape(-1).long()
        outside = values[(values < 0) | (values >= size)]
        if len(outside):
            raise LoaderError(f"train batch {index} names row {int(outside[0])}: the training set has rows 0 to "
                              f"{size - 1}")
        rows.append(values.numpy())
    if not rows or not sum(len(r) for r in rows):
        raise LoaderError("the train loader yields no rows")
    return np.concatenate(rows)


def loader_queries(loader: DataLoader, resolution: int) -> list[Query]:
    """The queries a test loader's batches hold, in order: lists of Query, or (uint8 images (B, H, W, 3), prompts)."""
    queries = []
    for index, batch in enumerate(loader):
        if isinstance(batch, (tuple, list)) and batch and all(isinstance(q, Query) for q in batch):
            queries.extend(batch)
            continue
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise LoaderError(f"test batch {index} is a {type(batch).__name__}: give batches of (images, prompts) "
                              "or lists of unlearn_fast Query objects (query_loader)")
        images, prompts = batch
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise LoaderError(f"test batch {index}: prompts must be a list of strings, got {type(prompts).__name__}")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (resolution, resolution, 3):
            raise LoaderError(f"test batch {index}: query images must be uint8 (B, {resolution}, {resolution}, 3), "
                              f"got {images.dtype} {images.shape}")
        if len(images) != len(prompts):
            raise LoaderError(f"test batch {index}: {len(images)} images for {len(prompts)} prompts")
        first = len(queries)
        queries.extend(query_from_array(image, prompt, resolution, source=f"dattri test loader, item {first + i}")
                       for i, (image, prompt) in enumerate(zip(images, prompts)))
    if not queries:
        raise LoaderError("the test loader yields no queries")
    return queries
