"""AbU behind dattri 0.3's attributor interface (interop/dattri.py): dattri's cache / attribute calls return, bit for
bit and transposed, the scores unlearn_fast's own Attributor gives; dattri's LDS reads the result in its orientation;
what cannot map to the training set or to queries is refused before any work."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from unlearn_fast.attributor import Attributor, PrepareSettings
from unlearn_fast.data import SubsetDataset, load_pixels
from unlearn_fast.engine.fisher import FisherSettings
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.interop.dattri import AbUAttributor, LoaderError, TrainingRows, query_loader, training_loader
from unlearn_fast.query import query_from_array

dattri_base = pytest.importorskip("dattri.algorithm.base")
dattri_metric = pytest.importorskip("dattri.metric")

UNLEARN = UnlearnSettings(step=AlphaOverN(1e-4), steps=2, draws=24, batch_size=24)
TRAIN = range(360, 392)  # 32 default images
SETTINGS = PrepareSettings(scoring=LossGrid(timesteps=2, flips=False, batch_size=64, seed=5),
                           fisher=FisherSettings(batch_size=32, seed=5), chunk_rows=16)


@pytest.fixture(scope="module")
def data(default_dataset):
    return SubsetDataset(default_dataset, TRAIN)


@pytest.fixture(scope="module")
def query_images(default_dataset):
    """Two training images (subset rows 9 and 20) as query images, each with another caption."""
    return load_pixels(default_dataset, 32, [369, 380]), ["red apple", "a small green plant"]


@pytest.fixture(scope="module")
def reference(model, data, query_images, tmp_path_factory):
    """unlearn_fast's own Attributor on the same queries, in its own work directory: scores (queries, N)."""
    images, prompts = query_images
    queries = [query_from_array(image, prompt, 32) for image, prompt in zip(images, prompts)]
    attributor = Attributor(model, data, tmp_path_factory.mktemp("reference"), SETTINGS, progress=False)
    return attributor.attribute(queries, UNLEARN).scores


@pytest.fixture(scope="module")
def abu(model, data, tmp_path_factory):
    return AbUAttributor(Attributor(model, data, tmp_path_factory.mktemp("dattri"), SETTINGS, progress=False),
                         UNLEARN)


@pytest.mark.slow
def test_dattri_s_calls_give_the_attributor_s_scores_transposed(abu, reference, query_images):
    """cache(full train loader) then attribute(train loader, test loader of (images, prompts)): float32
    (num_train, num_test), equal bit for bit to Attributor.attribute's (num_queries, num_train) transposed; a
    shuffled subset of the rows gives those rows, in the loader's order."""
    assert isinstance(abu, dattri_base.BaseAttributor)
    images, prompts = query_images
    abu.cache(training_loader(abu.attributor, batch_size=7))
    scores = abu.attribute(training_loader(abu.attributor, batch_size=5),
                           query_loader(images, prompts, batch_size=1))
    assert scores.dtype == torch.float32 and scores.shape == (len(TRAIN), 2)
    assert torch.equal(scores, torch.from_numpy(reference).T)
    assert np.array_equal(abu.attribution.scores, reference)
    assert int(scores[:, 0].argmax()) == 9  # the query image is training row 9: unlearning it raises its loss most

    rows = [20, 3, 9, 31, 0]
    subset = abu.attribute(DataLoader(Subset(TrainingRows(len(TRAIN)), rows), batch_size=2, shuffle=False),
                           query_loader([query_from_array(image, prompt, 32) for image, prompt in
                                         zip(images[::-1], prompts[::-1])]))
    assert torch.equal(subset, torch.from_numpy(reference[::-1][:, rows].copy()).T)


@pytest.mark.slow
def test_dattri_s_lds_reads_the_result_in_its_orientation(abu, reference, query_images):
    """A ground truth that is exactly additive in the scores (each subset's target = the sum of its rows' scores)
    has an LDS of 1 for every query under dattri.metric.lds, which indexes the result as (num_train, num_test)."""
    images, prompts = query_images
    scores = abu.attribute(training_loader(abu.attributor), query_loader(images, prompts))
    subsets = torch.from_numpy(np.stack([np.random.default_rng(s).choice(len(TRAIN), 16, replace=False)
                                         for s in range(20)]))
    targets = torch.from_numpy(np.stack([reference[:, rows].astype(np.float64).sum(1) for rows in subsets.numpy()]))
    correlation, _ = dattri_metric.lds(scores, (targets, subsets))
    assert correlation.shape == (2,)
    torch.testing.assert_close(correlation, torch.ones(2))


def test_what_cannot_map_is_refused_before_any_work(model, data, tmp_path, query_images, monkeypatch):
    attributor = Attributor(model, data, tmp_path, SETTINGS, progress=False)
    monkeypatch.setattr(attributor, "attribute", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(attributor, "prepare", lambda *a, **k: pytest.fail("work started"))
    abu = AbUAttributor(attributor, UNLEARN)
    images, prompts = query_images
    queries = query_loader(images, prompts)
    with pytest.raises(LoaderError, match="no dattri AttributionTask"):
        AbUAttributor(attributor, UNLEARN, task=object())
    pixels = DataLoader(torch.zeros(4, 3, 32, 32), batch_size=2)
    with pytest.raises(LoaderError, match=r"train batch 0 holds a torch.float32 tensor of shape \(2, 3, 32, 32\)"):
        abu.attribute(pixels, queries)
    with pytest.raises(LoaderError, match="train batch 2 names row 32: the training set has rows 0 to 31"):
        abu.attribute(DataLoader(TrainingRows(40), batch_size=16), queries)
    with pytest.raises(LoaderError, match="names 8 distinct rows of 8; the training set has 32"):
        abu.cache(DataLoader(TrainingRows(8)))
    with pytest.raises(LoaderError, match=r"test batch 0: query images must be uint8 \(B, 32, 32, 3\), got float32"):
        abu.attribute(training_loader(attributor), query_loader(images.astype(np.float32) / 255, prompts))
    with pytest.raises(LoaderError, match=r"test batch 0: query images must be uint8 \(B, 32, 32, 3\), got uint8 "
                                          r"\(2, 3, 32, 32\)"):
        abu.attribute(training_loader(attributor), query_loader(images.transpose(0, 3, 1, 2), prompts))
    with pytest.raises(LoaderError, match="test batch 0 is a Tensor"):
        abu.attribute(training_loader(attributor), DataLoader(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)))
