"""Captioned training sets, read the way diffusers' text-to-image scripts read them.

Formats (``open_dataset`` picks by what the path is):
- ``"default"``: the embedded emoji set (a parquet file shipped inside the package);
- a folder with ``metadata.jsonl`` (``file_name`` + a caption column, ``text`` by default; the column may hold a list of
  captions);
- a ``.parquet`` file (an ``image`` column of encoded bytes, or of ``{"bytes": ...}`` structs as 🤗 datasets writes it,
  plus a caption column);
- webdataset shards: a ``.tar`` file, a folder of them, or a brace pattern ``shards-{000..009}.tar``.

Every dataset answers the same questions — how many images, the key (file name) and captions of image i, image i
decoded as RGB, where image i comes from (``where``: file, line) and what its bytes are (``content_index``) — and
every failure names the file and line at fault. Lines and rows are counted from 1, as editors do; "training index"
is the 0-based index of the score arrays. ``metadata_field(name)`` reads one metadata field of every image (a key of
the metadata.jsonl rows, a parquet column, a key of a webdataset sample's ``.json``) for attribution by group.
"""
from __future__ import annotations

import io
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import UserInputError
from .content import (DigestCache, cached_file_rows, digest_rows, empty_index, fingerprint_of, probe_bytes, probe_file,
                      rows_of)
from .preprocess import model_input, to_rgb

DEFAULT_DATASET = os.path.join(os.path.dirname(__file__), "default", "emoji32.parquet")


class DataError(UserInputError):
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


def field_value(value, name: str, where: str) -> str | None:
    """A metadata value as a group label: strings as they are, numbers and booleans as text, null as missing. A list
    or an object would put one image in several groups (or none): refused, naming the row."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict)):
        raise DataError(f"{where}: field {name!r} holds {type(value).__name__} {str(value)[:60]!r}; grouping needs one "
                        "string per image")
    return str(value)


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises several types for truncated or non-image data
        raise DataError(f"{where}: cannot decode image ({type(error).__name__}: {error})") from None
    return to_rgb(image)


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

    def where(self, index: int) -> str:
        """Where image `index` comes from, for a person: its file and line (counted from 1)."""
        return f"{self.key(index)} (training index {index} of {self.source})"

    def field_values(self, name: str) -> list[str | None]:
        """The metadata field `name` of every image (None where a row lacks it); formats with metadata override it."""
        raise DataError(f"{self.source}: this training set has no metadata fields (field {name!r} asked for)")

    def metadata_field(self, name: str) -> list[str]:
        """The field `name` of every image as a string; a row lacking it is an error naming the field and that row
        (the first one), raised before any work that needs it. Read once per field: the check before the work and
        every group table after it share the values."""
        cache = self.__dict__.setdefault("_metadata_fields", {})
        if name not in cache:
            cache[name] = self._checked_field(name)
        return cache[name]

    def _checked_field(self, name: str) -> list[str]:
        values = self.field_values(name)
        missing = [i for i, value in enumerate(values) if value is None]
        if missing and len(missing) == len(values):
            raise DataError(f"{self.source}: no row has the metadata field {name!r}{self._fields_hint()}")
        if missing:
            raise DataError(f"{self.where(missing[0])}: no metadata field {name!r} ({len(missing)} of {len(values)} "
                            "rows lack it; every image needs a value to be grouped)")
        return values

    def _fields_hint(self) -> str:
        return ""

    def content_index(self, cache: DigestCache | None = None) -> np.ndarray:
        """content.INFO per image (digest of its encoded bytes, size, mode). This generic version digests the decoded
        RGB pixels of every image; the formats below digest the stored bytes, cached per file."""
        index = empty_index(len(self))
        for i in range(len(self)):
            image = self.image(i)
            index[i] = probe_bytes(_png(image), self.where(i), DataError)[0]
        return index

    def caption_digests(self) -> np.ndarray:
        """(N, 16) uint8: a digest of each image's key and captions."""
        return digest_rows(self.key(i).encode() + b"\0" + "\x1f".join(self.captions(i)).encode()
                           for i in range(len(self)))

    def fingerprint(self, cache: DigestCache | None = None) -> str:
        """Hash of the keys, captions and image bytes, in order: changes when any image's bytes, the set, its order or
        its captions change."""
        return fingerprint_of(np.concatenate([self.caption_digests(), self.content_index(cache)["digest"]], axis=1))

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
        self._lines: list[int] = []
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
            self._lines.append(line_number)
        if not self._examples:
            raise DataError(f"{self.source}: no rows")

    def __len__(self) -> int:
        return len(self._examples)

    def example(self, index: int) -> Example:
        return self._examples[self._check_index(index)]

    def where(self, index: int) -> str:
        return f"{self.example(index).key} ({self.source} line {self._lines[index]})"

    def _rows(self):
        with open(self.source, encoding="utf-8-sig") as handle:
            lines = handle.readlines()
        return [(line_number, json.loads(lines[line_number - 1])) for line_number in self._lines]

    def field_values(self, name: str) -> list[str | None]:
        # Re-read on demand: keeping every row's other fields for a million images would cost memory for nothing.
        return [field_value(row.get(name), name, f"{self.source} line {line}") for line, row in self._rows()]

    def _fields_hint(self) -> str:
        with open(self.source, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if number == self._lines[0]:
                    return f" (fields of line {number}: {sorted(json.loads(line))})"
        return ""

    def _path(self, index: int) -> str:
        path = os.path.join(self.root, self.example(index).key)
        if not os.path.isfile(path):
            raise DataError(f"{path}: image file missing ({self.source} line {self._lines[index]})")
        return path

    def image(self, index: int) -> Image.Image:
        path = self._path(index)
        with open(path, "rb") as handle:
            return decode_image(handle.read(), f"{path} ({self.source} line {self._lines[index]})")

    def content_index(self, cache: DigestCache | None = None) -> np.ndarray:
        cache = cache or DigestCache(None)
        root = os.path.abspath(self.root)
        cache.prefetch(root)
        blobs = []
        for i, example in enumerate(self._examples):
            path = os.path.join(root, example.key)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                raise DataError(f"{path}: image file missing ({self.source} line {self._lines[i]})") from None
            blobs.append(cached_file_rows(
                cache, path, lambda: probe_file(path, f"{path} ({self.source} line {self._lines[i]})", DataError), stat))
        cache.flush()
        return rows_of(b"".join(blobs))


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

    def where(self, index: int) -> str:
        return self.base.where(self.indices[self._check_index(index)])

    def content_index(self, cache: DigestCache | None = None) -> np.ndarray:
        return self.base.content_index(cache)[self.indices]

    def field_values(self, name: str) -> list[str | None]:
        values = self.base.field_values(name)
        return [values[i] for i in self.indices]

    def _fields_hint(self) -> str:
        return self.base._fields_hint()


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
            Example(i, str(keys[i]) if keys else f"row-{i}", _as_captions(caption, f"{path} row {i + 1}"))
            for i, caption in enumerate(table.column(caption_column).to_pylist())
        ]
        if not self._examples:
            raise DataError(f"{path}: no rows")
        self._columns = table.column_names

    def __len__(self) -> int:
        return len(self._examples)

    def example(self, index: int) -> Example:
        return self._examples[self._check_index(index)]

    def where(self, index: int) -> str:
        return f"{self.example(index).key} ({self.source} row {index + 1})"

    def field_values(self, name: str) -> list[str | None]:
        import pyarrow.parquet as pq

        if name not in self._columns:
            return [None] * len(self)
        column = pq.read_table(self.source, columns=[name]).column(name).to_pylist()
        return [field_value(value, name, f"{self.source} row {i + 1}") for i, value in enumerate(column)]

    def _fields_hint(self) -> str:
        return f" (columns: {self._columns})"

    def _bytes(self, index: int) -> bytes:
        data = self._images[self._check_index(index)]
        if not data:
            raise DataError(f"{self.source} row {index + 1}: no image bytes")
        return data

    def image(self, index: int) -> Image.Image:
        return decode_image(self._bytes(index), self.where(index))

    def content_index(self, cache: DigestCache | None = None) -> np.ndarray:
        def compute():
            return np.concatenate([probe_bytes(self._bytes(i), self.where(i), DataError) for i in range(len(self))])
        blob = cached_file_rows(cache or DigestCache(None), os.path.abspath(self.source), compute)
        if cache is not None:
            cache.flush()
        return rows_of(blob)


def load_pixels(dataset: CaptionedImages, resolution: int, indices=None) -> np.ndarray:
    """Decode images into the model's uint8 input (n, resolution, resolution, 3), as preprocess.model_input states."""
    indices = range(len(dataset)) if indices is None else indices
    out = np.empty((len(indices), resolution, resolution, 3), dtype=np.uint8)
    for row, index in enumerate(indices):
        out[row] = model_input(dataset.image(int(index)), resolution)
    return out


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
