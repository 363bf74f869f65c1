"""Two planted images, R copies each under their own new caption, among 200 default images; the shipped model
fine-tuned on the result (evaluate/planted.py's recipe, as tests/evaluate/test_planted.py sizes it). Shared by the group test
(test_groups.py) and the region test (test_mask.py): one fine-tune for both."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.evaluate.planted import AugmentedDataset, distinctive_image, seeded_subset
from unlearn_fast.workspace import PrepareSettings

CAPTIONS = ("zorblat quadrille", "vexmor plinthgrave")
COPIES, BASE = 8, 200
# α/N's step as test_planted.py sizes it for N ≈ 208 (α = 0.1 was chosen at N = 3,953)
UNLEARN = UnlearnSettings(step=AlphaOverN(0.1 * (BASE + 2 * COPIES) / 3953), draws=200)
PREPARE = PrepareSettings(scoring=LossGrid(timesteps=4, flips=True, batch_size=128))


@dataclass
class TwoPlants:
    folder: str  # the image folder (metadata.jsonl)
    model_dir: str
    images: tuple  # planted image A, B: uint8 (32, 32, 3)
    planted: tuple  # training indices of A's copies, B's copies


def build_two_plants(base, out_dir: str) -> TwoPlants:
    from unlearn_fast.data.export import export_imagefolder
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.training.run import TrainRequest, run_training

    images = (distinctive_image(32, 0), distinctive_image(32, 3))
    base = seeded_subset(base, BASE, 0)
    extra = [images[0]] * COPIES + [images[1]] * COPIES
    captions = [CAPTIONS[0]] * COPIES + [CAPTIONS[1]] * COPIES
    folder, model_dir = os.path.join(out_dir, "data"), os.path.join(out_dir, "model")
    if not os.path.isfile(os.path.join(folder, "metadata.jsonl")):
        export_imagefolder(AugmentedDataset(base, extra, captions, "planted"), folder)
    if not os.path.isfile(os.path.join(model_dir, "training.json")):
        starting = DiffusionModel.load("default")
        words = sorted({w for c in CAPTIONS for w in starting.text.tokenizer.unknown_words(c)})
        run_training(TrainRequest(data=folder, out=model_dir, init_from="default", add_tokens=words, steps=120,
                                  batch_size=32, lr=1e-3, seed=0, command="tests/two_plants.py"), quiet=True)
    n = len(base)
    return TwoPlants(folder, model_dir, images,
                     (list(range(n, n + COPIES)), list(range(n + COPIES, n + 2 * COPIES))))


def composite(images) -> np.ndarray:
    """A's left half beside B's right half."""
    a, b = images
    out = b.copy()
    out[:, : a.shape[1] // 2] = a[:, : a.shape[1] // 2]
    return out
