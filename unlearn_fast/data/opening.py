"""open_dataset: a captioned training set from what its path is (DESIGN.md's formats), each format's reader below it."""
from __future__ import annotations

import os

from .dataset import DEFAULT_DATASET, CaptionedImages, DataError, ImageFolderDataset, ParquetDataset
from .webdataset_shards import WebDatasetShards


def open_dataset(spec: str = "default", caption_column: str = "text") -> CaptionedImages:
    """Open a captioned training set from ``"default"``, an image folder, a parquet file or webdataset shards.

    The set remembers how it was opened (``reopen_args``), so outputs can record it and reports can reopen it.
    """
    dataset = _open(os.fspath(spec), caption_column)
    dataset.reopen_args = {"spec": os.path.abspath(spec) if spec != "default" else spec,
                           "caption_column": caption_column}
    return dataset


def _open(spec: str, caption_column: str) -> CaptionedImages:
    if spec == "default":
        return ParquetDataset(DEFAULT_DATASET)
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "metadata.jsonl")):
        return ImageFolderDataset(spec, caption_column)
    if spec.endswith(".parquet") and os.path.isfile(spec):
        return ParquetDataset(spec, caption_column)
    if spec.endswith(".tar") or "{" in spec or (os.path.isdir(spec) and any(f.endswith(".tar") for f in os.listdir(spec))):
        return WebDatasetShards(spec, caption_column)
    if not os.path.exists(spec):
        raise DataError(f"{spec}: no such file or folder (expected 'default', an image folder with metadata.jsonl, "
                        "a .parquet file or webdataset .tar shards)")
    if os.path.isdir(spec):
        raise DataError(f"{spec}: folder has no metadata.jsonl and no .tar shards (expected an image folder with "
                        "metadata.jsonl, as diffusers' text-to-image scripts read, or webdataset .tar shards)")
    raise DataError(f"{spec}: not a known training-set layout (expected 'default', an image folder with "
                    "metadata.jsonl, a .parquet file or webdataset .tar shards)")
