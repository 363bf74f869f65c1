"""open_dataset: a captioned training set from what its path is (DESIGN.md's formats), each format's reader below it."""
from __future__ import annotations

import os

from .dataset import DEFAULT_DATASET, CaptionedImages, DataError, ImageFolderDataset, ParquetDataset
from .subset import subset_of
from .webdataset_shards import WebDatasetShards


def open_dataset(spec: str = "default", caption_column: str = "text", image_column: str = "image",
                 subset: str | None = None) -> CaptionedImages:
    """Open a captioned training set from ``"default"``, an image folder, a parquet file, a folder of parquet shards
    (as 🤗 datasets writes them, in subfolders too) or webdataset shards. image_column: the images' column of parquet
    data (an image folder names its files in metadata.jsonl's file_name; a webdataset sample by its extension).

    subset: a file naming the images to keep (data/subset.py: file names or row indices), in its order.

    The set remembers how it was opened (``reopen_args``), so outputs can record it and reports can reopen it.
    """
    dataset = _open(os.fspath(spec), caption_column, image_column)
    if subset is not None:
        dataset = subset_of(dataset, os.fspath(subset))
    dataset.reopen_args = {"spec": os.path.abspath(spec) if spec != "default" else spec,
                           "caption_column": caption_column, "image_column": image_column,
                           **({"subset": os.path.abspath(subset)} if subset is not None else {})}
    return dataset


def parquet_shards(folder: str) -> list[str]:
    """The .parquet files under `folder` (subfolders included), in sorted order: one training set."""
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if name.endswith(".parquet"))


def _open(spec: str, caption_column: str, image_column: str) -> CaptionedImages:
    folder = os.path.isdir(spec)
    image_folder = folder and os.path.isfile(os.path.join(spec, "metadata.jsonl"))
    tar_shards = spec.endswith(".tar") or "{" in spec or (folder and any(f.endswith(".tar") for f in os.listdir(spec)))
    shards = parquet_shards(spec) if folder and not (image_folder or tar_shards) else []  # one walk of the folder
    if image_column != "image" and not (spec.endswith(".parquet") or shards):
        raise DataError(f"{spec}: --image-column {image_column!r} names a parquet column; this is not parquet data "
                        "(an image folder names its images in metadata.jsonl's file_name, a webdataset sample by its "
                        "extension)")
    if spec == "default":
        return ParquetDataset(DEFAULT_DATASET)
    if image_folder:
        return ImageFolderDataset(spec, caption_column)
    if spec.endswith(".parquet") and os.path.isfile(spec):
        return ParquetDataset(spec, caption_column, image_column)
    if tar_shards:
        return WebDatasetShards(spec, caption_column)
    if shards:
        return ParquetDataset(shards, caption_column, image_column)
    if not os.path.exists(spec):
        raise DataError(f"{spec}: no such file or folder (expected 'default', an image folder with metadata.jsonl, "
                        "a .parquet file or webdataset .tar shards)")
    if os.path.isdir(spec):
        raise DataError(f"{spec}: folder has no metadata.jsonl, no .parquet and no .tar shards (expected an image "
                        "folder with metadata.jsonl, as diffusers' text-to-image scripts read, parquet shards or "
                        "webdataset .tar shards)")
    raise DataError(f"{spec}: not a known training-set layout (expected 'default', an image folder with "
                    "metadata.jsonl, a .parquet file or webdataset .tar shards)")

