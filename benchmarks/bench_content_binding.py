"""What binding a work directory to the CONTENT of its training set costs (data/content.py): a digest of every image's
bytes plus its header, cached per file by (size, mtime, ctime, inode), against the names-and-captions fingerprint the
binding used before (no image byte read), side by side in one run.

    python3 -m pytest benchmarks/bench_content_binding.py --benchmark-columns=mean,min,max,rounds --benchmark-group-by=group

- default set: the embedded parquet (3,953 PNGs in one file; cached as one entry per file);
- a synthetic image folder of UNLEARN_FAST_BENCH_FILES (default 100,000) small distinct PNGs (8×8, ~250 bytes) with
  metadata.jsonl: "first run" = empty digest cache (every file read; the files were just written, so they are in the
  page cache: a cold disk would add its read time), "rerun" = the cache from a previous run (one stat per file).
Opening the set (parsing metadata.jsonl) is measured on its own: every run pays it, with or without the binding.
"""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from unlearn_fast.data import open_dataset
from unlearn_fast.data.content import DigestCache, fingerprint_of

FILES = int(os.environ.get("UNLEARN_FAST_BENCH_FILES", "100000"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i in range(FILES):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
            name = f"{i // 1000:03d}/{i:06d}.png"
            os.makedirs(root / name[:3], exist_ok=True)
            (root / name).write_bytes(buffer.getvalue())
            meta.write(json.dumps({"file_name": name, "text": f"synthetic image {i}"}) + "\n")
    return str(root)


def _names_only(dataset) -> str:
    return fingerprint_of(dataset.caption_digests())


def _fresh_cache(tmp_path_factory):
    return (DigestCache(str(tmp_path_factory.mktemp("cache"))),), {}


@pytest.mark.benchmark(group="default set (3,953 images, one parquet)")
def test_default_names_and_captions_only(benchmark):
    dataset = open_dataset("default")
    benchmark.pedantic(_names_only, args=(dataset,), rounds=5, iterations=1)


@pytest.mark.benchmark(group="default set (3,953 images, one parquet)")
def test_default_content_first_run(benchmark, tmp_path_factory):
    dataset = open_dataset("default")
    benchmark.pedantic(lambda cache: dataset.content_index(cache), setup=lambda: _fresh_cache(tmp_path_factory),
                       rounds=5, iterations=1)


@pytest.mark.benchmark(group="default set (3,953 images, one parquet)")
def test_default_content_rerun(benchmark, tmp_path):
    dataset = open_dataset("default")
    dataset.content_index(DigestCache(str(tmp_path)))
    benchmark.pedantic(lambda: dataset.content_index(DigestCache(str(tmp_path))), rounds=5, iterations=1)


@pytest.mark.benchmark(group=f"image folder ({FILES:,} small files)")
def test_folder_open_metadata(benchmark, folder):
    benchmark.pedantic(open_dataset, args=(folder,), rounds=3, iterations=1)


@pytest.mark.benchmark(group=f"image folder ({FILES:,} small files)")
def test_folder_names_and_captions_only(benchmark, folder):
    dataset = open_dataset(folder)
    benchmark.pedantic(_names_only, args=(dataset,), rounds=3, iterations=1)


@pytest.mark.benchmark(group=f"image folder ({FILES:,} small files)")
def test_folder_content_first_run(benchmark, folder, tmp_path_factory):
    dataset = open_dataset(folder)
    benchmark.pedantic(lambda cache: dataset.content_index(cache), setup=lambda: _fresh_cache(tmp_path_factory),
                       rounds=2, iterations=1)


@pytest.mark.benchmark(group=f"image folder ({FILES:,} small files)")
def test_folder_content_rerun(benchmark, folder, tmp_path):
    dataset = open_dataset(folder)
    first = dataset.content_index(DigestCache(str(tmp_path)))
    index = benchmark.pedantic(lambda: dataset.content_index(DigestCache(str(tmp_path))), rounds=3, iterations=1)
    np.testing.assert_array_equal(index, first)
