"""Planted duplicates: ground truth by construction (METHOD.md, "How attribution is judged" §2).

One distinctive image, unlike anything in the training set, is added R times under a caption of new words; the model
is fine-tuned on the result until it can make that image from that caption. An image generated from the caption is
then attributed: the R copies are the right answer, so the share of them among the top R ranks measures the method.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from ..data.dataset import CaptionedImages, Example, SubsetDataset
from ..data.export import export_imagefolder
from ..ranking import rank_positions
from .metrics import recall_at_k


@dataclass
class PlantedSetup:
    """copies: R. base_images: size of a seeded random subset of the base set (None: all of it). caption: words the
    model has never seen. finetune_*: the fine-tuning run (from the base model, every weight, new words added)."""

    copies: int = 10
    base_images: int | None = None
    caption: str = "zorblat quadrille"
    finetune_steps: int = 400
    finetune_batch_size: int = 64
    finetune_lr: float = 5e-4
    seed: int = 0
    query_seed: int = 0
    query_steps: int = 50


def distinctive_image(resolution: int, seed: int = 0) -> np.ndarray:
    """A full-bleed pattern (tartan of seeded colours over a diagonal ramp): nothing like centred emoji on white."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (4, 3))
    y, x = np.mgrid[0:resolution, 0:resolution]
    band = ((x // max(1, resolution // 8)) + 2 * (y // max(1, resolution // 8))) % 4
    ramp = ((x + y) / (2 * resolution - 2))[..., None]
    image = colours[band] * (0.6 + 0.4 * ramp)
    return image.clip(0, 255).astype(np.uint8)


class AugmentedDataset(CaptionedImages):
    """base images followed by extra images with their captions, named <prefix>_<i>.png."""

    def __init__(self, base: CaptionedImages, images: list[np.ndarray], captions: list[str], prefix: str):
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} extra images but {len(captions)} captions")
        self.base, self.extra, self.extra_captions, self.prefix = base, images, captions, prefix
        self.source = f"{base.source} + {len(images)} {prefix} images"

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def example(self, index: int):
        if self._check_index(index) < len(self.base):
            ex = self.base.example(index)
            return Example(index, ex.key, ex.captions)
        k = index - len(self.base)
        return Example(index, f"{self.prefix}_{k}.png", (self.extra_captions[k],))

    def image(self, index: int) -> Image.Image:
        if self._check_index(index) < len(self.base):
            return self.base.image(index)
        return Image.fromarray(self.extra[index - len(self.base)])


def seeded_indices(total: int, size: int | None, seed: int) -> np.ndarray:
    """The sorted indices seeded_subset keeps (all of them when size is None or not smaller than total)."""
    if size is None or size >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size, replace=False))


def seeded_subset(base: CaptionedImages, size: int | None, seed: int) -> CaptionedImages:
    if size is None or size >= len(base):
        return base
    return SubsetDataset(base, seeded_indices(len(base), size, seed))


def build_planted_set(base: CaptionedImages, setup: PlantedSetup, resolution: int, out_dir: str
                      ) -> tuple[str, list[int]]:
    """Write the planted training set as an image folder; returns (folder, indices of the planted copies)."""
    base = seeded_subset(base, setup.base_images, setup.seed)
    image = distinctive_image(resolution, setup.seed)
    dataset = AugmentedDataset(base, [image] * setup.copies, [setup.caption] * setup.copies, "planted")
    export_imagefolder(dataset, out_dir)
    return out_dir, list(range(len(base), len(dataset)))


def top_r_share(scores: np.ndarray, planted: list[int]) -> float:
    """Share of the planted indices among the len(planted) highest scores."""
    return recall_at_k(scores, planted, len(planted))


@dataclass
class PlantedResult:
    planted: list[int]
    shares: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, list[int]] = field(default_factory=dict)
    chance: float = 0.0
    finetune: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_planted(base_model: str, base: CaptionedImages, setup: PlantedSetup, out_dir: str, prepare_settings,
                methods: dict, quiet: bool = True) -> tuple[PlantedResult, dict]:
    """Build the set, fine-tune, generate the query from the caption, attribute it with each of `methods`
    ({name: UnlearnSettings}). Returns the result and {name: Attribution}. Every stage is skipped if already done."""
    from ..data import open_dataset
    from ..models.adapter import DiffusionModel
    from ..methods.abu.method import attribute_by_unlearning
    from ..query import query_from_prompt
    from ..training.run import TrainRequest, run_training
    from ..workspace import Workspace

    starting = DiffusionModel.load(base_model)  # its resolution and vocabulary
    data_dir, model_dir = os.path.join(out_dir, "data"), os.path.join(out_dir, "model")
    if not os.path.isfile(os.path.join(data_dir, "metadata.jsonl")):
        build_planted_set(base, setup, starting.resolution, data_dir)
    dataset = open_dataset(data_dir)
    planted = [i for i in range(len(dataset)) if dataset.key(i).startswith("planted_")]
    if not os.path.isfile(os.path.join(model_dir, "training.json")):
        run_training(TrainRequest(data=data_dir, out=model_dir, init_from=base_model,
                                  add_tokens=starting.text.tokenizer.unknown_words(setup.caption),
                                  steps=setup.finetune_steps,
                                  batch_size=setup.finetune_batch_size, lr=setup.finetune_lr, seed=setup.seed,
                                  command="evaluate.planted.run_planted"), quiet=quiet)
    with open(os.path.join(model_dir, "training.json"), encoding="utf-8") as handle:
        finetune = {k: v for k, v in json.load(handle).items() if k in ("first_loss", "final_loss", "train_seconds")}
    model = DiffusionModel.load(model_dir)
    query = query_from_prompt(model, setup.caption, seed=setup.query_seed, steps=setup.query_steps)
    workspace = Workspace(model, dataset, os.path.join(out_dir, "work"), prepare_settings, progress=not quiet)
    result = PlantedResult(planted=planted, chance=len(planted) / len(dataset), finetune=finetune)
    attributions = {}
    for name, settings in methods.items():
        attribution = attribute_by_unlearning(workspace, [query], settings)
        position = rank_positions(attribution.scores[0])
        result.shares[name] = top_r_share(attribution.scores[0], planted)
        result.ranks[name] = sorted(int(position[i]) for i in planted)
        attributions[name] = attribution
    return result, attributions
