import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the test suite may reach a hub


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped on a machine without a CUDA device (they still count, as skips)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _digest_cache(tmp_path_factory):
    """Image digests cached in a folder of the test session's own, never in the user's ~/.cache."""
    os.environ["UNLEARN_FAST_CACHE"] = str(tmp_path_factory.mktemp("digest_cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of tiny ops and models (a few thousand FLOPs per op): on the 2-core machine a
    second thread only waits. Modules opt in with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_dataset():
    from unlearn_fast.data import open_dataset

    return open_dataset("default")


@pytest.fixture(scope="session")
def default_image_folder(tmp_path_factory, default_dataset):
    """folder(indices) -> an image folder (metadata.jsonl) of those default images, written once per range."""
    from unlearn_fast.data import SubsetDataset, export_imagefolder

    made = {}

    def folder(indices: range) -> str:
        if indices not in made:
            root = tmp_path_factory.mktemp(f"images{indices.start}-{indices.stop}")
            export_imagefolder(SubsetDataset(default_dataset, indices), str(root))
            made[indices] = str(root)
        return made[indices]
    return folder


@pytest.fixture(scope="session")
def small_pixels(default_dataset):
    """The first 96 default images as uint8 (96, 32, 32, 3), and their captions."""
    from unlearn_fast.data import load_pixels

    indices = list(range(96))
    return load_pixels(default_dataset, 32, indices), [default_dataset.captions(i) for i in indices]


@pytest.fixture(scope="module")
def model():
    """The shipped default model, in eval mode (one per test module: tests may not change it)."""
    from unlearn_fast.models.adapter import DiffusionModel

    return DiffusionModel.load("default").eval()


@pytest.fixture(scope="module")
def red_apple_query(default_dataset):
    """The training image at default index 369 ('red apple') as a query."""
    from unlearn_fast.data import load_pixels
    from unlearn_fast.query import query_from_array

    return query_from_array(load_pixels(default_dataset, 32, [369])[0], "red apple", 32, source="training image 369")


@pytest.fixture()
def tiny_model(small_pixels):
    """A freshly initialised default-architecture model (seeded), in eval mode."""
    from unlearn_fast.models.tiny import new_tiny_model

    torch.manual_seed(0)
    _, captions = small_pixels
    return new_tiny_model([c for cs in captions for c in cs]).eval()


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def two_plants(tmp_path_factory, default_dataset):
    """Two planted images fine-tuned into the shipped model (tests/two_plants.py): one fine-tune for the region and
    group tests."""
    from two_plants import build_two_plants

    return build_two_plants(default_dataset, str(tmp_path_factory.mktemp("two_plants")))
