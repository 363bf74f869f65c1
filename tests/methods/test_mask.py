"""Attribution by region (--mask): the query's unlearning loss restricted to a region of its image in latent space.

The composite test: two planted images A and B (8 copies each under their own new caption, tests/two_plants.py); the
query is A's left half beside B's right half under both captions. Masking the left half ranks A's copies first, the
right half B's. It uses the normalised score (L_u − L_o)/(L_u + L_o): under the raw score A's copies rise under ANY
unlearning here (a query of B's caption alone ranks them first too: METHOD.md's "the raw score favours images whose loss
moves under any change of the weights"), which would hide what the mask does."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.attributor import Attributor, PrepareSettings
from unlearn_fast.data import SubsetDataset, export_imagefolder, open_dataset
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.ranking import rank_positions
from unlearn_fast.methods.abu.method import query_folder
from unlearn_fast.query import QueryError, latent_weight, query_from_array, read_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_latent_weight_is_the_area_average_over_its_mean():
    mask = np.zeros((4, 4), np.float32)
    mask[0, 0] = 1.0  # one pixel of the top-left 2×2 cell
    mask[2:, 2:] = 1.0  # the whole bottom-right cell
    cells = np.array([[0.25, 0.0], [0.0, 1.0]])  # area averages
    expected = cells / cells.mean()  # mean 0.3125 → weights 0.8, 0, 0, 3.2
    assert np.allclose(latent_weight(mask, (2, 2)), expected) and np.isclose(latent_weight(mask, (2, 2))[1, 1], 3.2)
    assert (latent_weight(np.ones((32, 32), np.float32), (8, 8)) == 1.0).all()  # exactly 1: no rounding


def test_read_mask_modes_and_one_line_errors(tmp_path):
    grey = np.zeros((32, 32), np.uint8)
    grey[:, :16] = 255
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey).convert("1").save(tmp_path / "bit.png")
    for name in ("l.png", "rgb.png", "bit.png"):
        mask = read_mask(str(tmp_path / name), (32, 32))
        assert mask.dtype == np.float32 and mask[:, :16].min() == 1.0 and mask[:, 16:].max() == 0.0, name
    Image.fromarray(grey[:16], "L").save(tmp_path / "small.png")
    with pytest.raises(QueryError, match=r"small.png is 32×16; the query image is 32×32"):
        read_mask(str(tmp_path / "small.png"), (32, 32))
    Image.fromarray(np.zeros((32, 32, 4), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(QueryError, match="rgba.png has colour mode RGBA"):
        read_mask(str(tmp_path / "rgba.png"), (32, 32))
    query = query_from_array(np.zeros((32, 32, 3), np.uint8), "x", 32)
    with pytest.raises(QueryError, match="selects no pixel"):
        query.with_mask(np.zeros((32, 32)), "black.png")


def test_a_mask_is_part_of_the_query_key():
    query = query_from_array(np.zeros((32, 32, 3), np.uint8), "x", 32)
    left = np.zeros((32, 32), np.float32)
    left[:, :16] = 1
    keys = {query.key, query.with_mask(left).key, query.with_mask(1 - left).key, query.with_mask(np.ones((32, 32))).key}
    assert len(keys) == 4
    settings = UnlearnSettings()
    assert query_folder(query.with_mask(left), settings) != query_folder(query.with_mask(1 - left), settings)


def test_a_mask_of_ones_gives_the_scores_of_no_mask(model, default_dataset, red_apple_query, tmp_path):
    folder = tmp_path / "data"
    export_imagefolder(SubsetDataset(default_dataset, range(360, 384)), str(folder))
    settings = PrepareSettings(scoring=LossGrid(timesteps=2, flips=False, batch_size=64))
    unlearn = UnlearnSettings(step=AlphaOverN(1e-4), steps=1, draws=16, batch_size=16)
    attributor = Attributor(model, open_dataset(str(folder)), tmp_path / "work", settings, progress=False)
    ones = red_apple_query.with_mask(np.ones((32, 32)), "ones")
    half = np.zeros((32, 32))
    half[:, :16] = 1
    scores = attributor.attribute([red_apple_query, ones, red_apple_query.with_mask(half, "half")], unlearn).scores
    assert np.array_equal(scores[0], scores[1])  # bit-identical (and computed twice: the keys differ)
    assert not np.array_equal(scores[0], scores[2])  # the check can fail: a real mask changes the scores


@pytest.mark.slow
def test_each_half_of_a_composite_ranks_its_own_plant_first(two_plants, tmp_path):
    from two_plants import CAPTIONS, PREPARE, UNLEARN, composite
    from unlearn_fast.models.adapter import DiffusionModel

    model = DiffusionModel.load(two_plants.model_dir)
    attributor = Attributor(model, open_dataset(two_plants.folder), tmp_path / "work", PREPARE, progress=False)
    query = query_from_array(composite(two_plants.images), " ".join(CAPTIONS), 32, "composite")
    left = np.zeros((32, 32), np.float32)
    left[:, :16] = 1
    scores = attributor.attribute([query.with_mask(left, "left"), query.with_mask(1 - left, "right")],
                                  dataclasses.replace(UNLEARN, score="normalised")).scores
    a, b = two_plants.planted
    for q, (own, other) in enumerate(((a, b), (b, a))):
        position = rank_positions(scores[q])
        own_ranks, other_ranks = sorted(map(int, position[own])), sorted(map(int, position[other]))
        print(f"\nmask {('left', 'right')[q]}: own copies at ranks {own_ranks}, the other plant's at {other_ranks}")
        assert np.median(own_ranks) < np.median(other_ranks), (own_ranks, other_ranks)
        assert np.isin(np.argsort(-scores[q], kind="stable")[:8], own).sum() >= 5, (own_ranks, other_ranks)
