"""Captioned training sets: an image folder with metadata.jsonl, webdataset shards, parquet, or the embedded default."""
from .dataset import DEFAULT_DATASET, CaptionedImages, DataError, Example, SubsetDataset, load_pixels
from .opening import open_dataset
from .export import export_imagefolder, export_webdataset

__all__ = [
    "DEFAULT_DATASET",
    "CaptionedImages",
    "DataError",
    "Example",
    "SubsetDataset",
    "export_imagefolder",
    "export_webdataset",
    "load_pixels",
    "open_dataset",
]
