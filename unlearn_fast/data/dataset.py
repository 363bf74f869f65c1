"""Captioned training sets, read the way diffusers' text-to-image scripts read them.

Formats (``open_dataset`` picks by what the path is):
- ``"default"``: the embedded emoji set (a parquet file shipped inside the package);
- a folder with ``metadata.jsonl`` (``file_name`` + a caption column, ``text`` by default; the column may hold a list of
  captions);
- a ``.parquet`` file (an ``image`` column of encoded bytes, or of ``{"bytes": ...}`` structs as 🤗 datasets writes it,
  plus a caption column);
- webdataset shards: a ``.tar`` file, a folder of them, or a brace pattern ``shards-{000..009}.tar``.

Every dataset answers the same questions — how many images, the key (file name) and captions of image i, image i
decoded as RGB — and every failure names the file or row at fault.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_DATASET = os.path.join(os.path.dirname(__file__), "default", "emoji32.parquet")


class DataError(ValueError):
    """A training set that cannot be read; the message names the file and row."""


@dataclass(frozen=True)
class Example:
    index: int
    key: str
    captions: tuple[str, ...]


def _as_captions(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: no caption (expected a string or a non-empty list of strings, got {value!r})")
    captions = tuple(str(c).strip() for c in value if c is not None and str(c).strip())
    if not captions:
        raise DataError(f"{where}: caption is empty")
    return captions


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises several types for truncated or non-image data
        raise DataError(f"{where}: cannot decode image ({type(error).__name__}: {error})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (emoji and logos have transparent backgrounds)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class CaptionedImages(ABC):
    """N captioned images, addressed by index 0..N-1 (the index every score array uses)."""

    source: str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def example(self, index: int) -> Example: ...

    @abstractmethod
    def image(self, index: int) -> Image.Image: ...

    def captions(self, index: int) -> tuple[str, ...]:
        return self.example(index).captions

    def key(self, index: int) -> str:
        return self.example(index).key

    def fingerprint(self) -> str:
        """Hash of the keys and captions in order: changes when the set, its order or its captions change."""
        digest = hashlib.sha256()
        for i in range(len(self)):
            ex = self.example(i)
            digest.update(ex.key.encode() + b"\0" + "\x1f".join(ex.captions).encode() + b"\n")
        return digest.hexdigest()[:16]

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.source}: index {index} out of range for {len(self)} images")
        return index


class ImageFolderDataset(CaptionedImages):
    """A folder of images with ``metadata.jsonl``: one JSON object a line with ``file_name`` and a caption column."""

    def __init__(self, root: str, caption_column: str = "text"):
        self.root = root
        self.source = os.path.join(root, "metadata.jsonl")
        if not os.path.isfile(self.source):
            raise DataError(f"{root}: no metadata.jsonl (expected an image folder as diffusers' text-to-image scripts read)")
        self._examples: list[Example] = []
        try:
            with open(self.source, encoding="utf-8-sig") as handle:  # -sig: tolerate a byte-order mark from Windows tools
                lines = handle.readlines()
        except UnicodeDecodeError as error:
            raise DataError(f"{self.source}: not UTF-8 text ({error})") from None
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{self.source} line {line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object with 'file_name' and {caption_column!r}, got {row!r}")
            if "file_name" not in row:
                raise DataError(f"{where}: no 'file_name' field")
            if caption_column not in row:
                raise DataError(f"{where}: no caption column {caption_column!r} (fields: {sorted(row)})")
            captions = _as_captions(row[caption_column], where)
            self._examples.append(Example(len(self._examples), str(row["file_name"]), captions))
        if not self._examples:
            raise DataError(f"{self.source}: no rows")

    def __len__(self) -> int:
        return len(self._examples)

    def example(self, index: int) -> Example:
        return self._examples[self._check_index(index)]

    def image(self, index: int) -> Image.Image:
        path = os.path.join(self.root, self.example(index).key)
        if not os.path.isfile(path):
            raise DataError(f"{path}: image file missing (row {index} of {self.source})")
        with open(path, "rb") as handle:
            return decode_image(handle.read(), f"{path} (row {index} of {self.source})")


class SubsetDataset(CaptionedImages):
    """Some images of another set, in the given order: index i here is index indices[i] there."""

    def __init__(self, base: CaptionedImages, indices):
        self.base, self.indices = base, [int(i) for i in indices]
        for i in self.indices:
            base._check_index(i)
        self.source = f"{base.source} (subset of {len(self.indices)})"

    def __len__(self) -> int:
        return len(self.indices)

    def example(self, index: int) -> Example:
        ex = self.base.example(self.indices[self._check_index(index)])
        return Example(index, ex.key, ex.captions)

    def image(self, index: int) -> Image.Image:
        return self.base.image(self.indices[self._check_index(index)])


class ParquetDataset(CaptionedImages):
    """A parquet file with encoded image bytes and captions (the embedded default set uses this format)."""

    def __init__(self, path: str, caption_column: str = "text", image_column: str = "image", key_column: str = "file_name"):
        import pyarrow.parquet as pq

        self.source = path
        try:
            table = pq.read_table(path)
        except Exception as error:
            raise DataError(f"{path}: cannot read parquet ({error})") from None
        for column in (image_column, caption_column):
            if column not in table.column_names:
                raise DataError(f"{path}: no column {column!r} (columns: {table.column_names})")
        images = table.column(image_column).to_pylist()
        self._images = [cell.get("bytes") if isinstance(cell, dict) else cell for cell in images]
        keys = table.column(key_column).to_pylist() if key_column in table.column_names else None
        self._examples = [
            Example(i, str(keys[i]) if keys else f"row-{i}", _as_captions(caption, f"{path} row {i}"))
            for i, caption in enumerate(table.column(caption_column).to_pylist())
        ]
        if not self._examples:
            raise DataError(f"{path}: no rows")

    def __len__(self) -> int:
        return len(self._examples)

    def example(self, index: int) -> Example:
        return self._examples[self._check_index(index)]

    def image(self, index: int) -> Image.Image:
        data = self._images[self._check_index(index)]
        if not data:
            raise DataError(f"{self.source} row {index}: no image bytes")
        return decode_image(data, f"{self.source} row {index} ({self._examples[index].key})")


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
        from .webdataset_shards import WebDatasetShards

        return WebDatasetShards(spec, caption_column)
    if not os.path.exists(spec):
        raise DataError(f"{spec}: no such file or folder (expected 'default', an image folder with metadata.jsonl, "
                        "a .parquet file or webdataset .tar shards)")
    if os.path.isdir(spec):
        raise DataError(f"{spec}: folder has no metadata.jsonl and no .tar shards (expected an image folder with "
                        "metadata.jsonl, as diffusers' text-to-image scripts read, or webdataset .tar shards)")
    raise DataError(f"{spec}: not a known training-set layout (expected 'default', an image folder with "
                    "metadata.jsonl, a .parquet file or webdataset .tar shards)")


def load_pixels(dataset: CaptionedImages, resolution: int, indices=None) -> np.ndarray:
    """Decode images into a uint8 array (n, resolution, resolution, 3): centre crop to square, then resize."""
    indices = range(len(dataset)) if indices is None else indices
    out = np.empty((len(indices), resolution, resolution, 3), dtype=np.uint8)
    for row, index in enumerate(indices):
        out[row] = np.asarray(square_resize(dataset.image(int(index)), resolution))
    return out


def square_resize(image: Image.Image, resolution: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return image
