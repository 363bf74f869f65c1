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

An image folder reads nothing outside itself: every ``file_name`` must be a relative path that stays inside the folder
(a symlink may point anywhere inside it), naming a regular file — checked when the set is opened (the name) and before
any byte or cached digest of the file is used (what the name resolves to). Images above content.MAX_IMAGE_PIXELS are
refused from their header, in every format. Captions and keys must be valid Unicode (JSON can escape lone surrogates).
"""
from __future__ import annotations

import bisect
import io
import json
import os
import stat as stat_module
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import UserInputError
from .content import (DigestCache, cached_file_rows, digest_rows, empty_index, fingerprint_of, guarded,
                      open_image, open_regular, probe_bytes, probe_file, rows_of)
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
    for caption in captions:
        check_unicode(caption, "caption", where)
    return captions


def check_unicode(text: str, what: str, where: str) -> str:
    """`text` if it can be written as UTF-8; a lone surrogate (JSON may escape one, e.g. "\\ud800") is refused here
    rather than failing later in a digest, a tokenizer or an output file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(f"{where}: {what} {text[:60]!r} is not valid Unicode (lone surrogate "
                        f"{text[error.start]!r} at character {error.start + 1})") from None
    return text


def shown(text: str) -> str:
    """`text` (a key, a file name) as a message shows it: as it is when printable, else as a Python literal, so that a
    newline or a control character in a file name cannot split or garble a one-line message."""
    return text if text.isprintable() else repr(text)


def parse_json(text, where: str, member: str | None = None):
    """json.loads, any failure a DataError naming `where` (and the `member` holding the text): besides malformed JSON,
    Python refuses integers of more than 4300 digits (ValueError) and nesting deeper than its recursion limit."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        subject = f"{member} is not" if member else "not"
        raise DataError(f"{where}: {subject} valid JSON ({type(error).__name__}: {str(error)[:200]})") from None


def field_value(value, name: str, where: str) -> str | None:
    """A metadata value as a group label: strings as they are, numbers and booleans as text, null as missing. A list
    or an object would put one image in several groups (or none): refused, naming the row."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict)):
        raise DataError(f"{where}: field {name!r} holds {type(value).__name__} {str(value)[:60]!r}; grouping needs one "
                        "string per image")
    return check_unicode(str(value), f"field {name!r}", where)


def decode_image(data: bytes | BinaryIO, where: str) -> Image.Image:
    """Encoded bytes (or an open binary file) as an RGB image; the size is checked from the header before any pixel is
    decoded."""
    image = open_image(io.BytesIO(data) if isinstance(data, bytes) else data, where, DataError, "cannot decode image")
    return guarded(lambda: to_rgb(image), where, DataError, "cannot decode image")  # converting loads the pixels


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
        return f"{shown(self.key(index))} (training index {index} of {self.source})"

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
        # Every file_name must resolve under this real path: a symlinked data folder is fine, leaving it is not.
        self._real_root = os.path.realpath(root)
        self._examples: list[Example] = []
        self._names: list[str] = []  # each file_name normalised, relative to the folder
        self._lines: list[int] = []
        for line_number, line in enumerate(self._read_lines(), start=1):
            if not line.strip():
                continue
            where = f"{self.source} line {line_number}"
            row = parse_json(line, where)
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object with 'file_name' and {caption_column!r}, "
                                f"got {str(row)[:80]!r}")
            if "file_name" not in row:
                raise DataError(f"{where}: no 'file_name' field")
            if caption_column not in row:
                raise DataError(f"{where}: no caption column {caption_column!r} (fields: {sorted(row)!r:.200})")
            name = _relative_file_name(row["file_name"], where)
            captions = _as_captions(row[caption_column], where)
            self._examples.append(Example(len(self._examples), row["file_name"], captions))
            self._names.append(name)
            self._lines.append(line_number)
        if not self._examples:
            raise DataError(f"{self.source}: no rows")

    def _read_lines(self) -> list[str]:
        try:  # -sig: tolerate a byte-order mark from Windows tools
            with io.TextIOWrapper(open_regular(self.source, self.source, DataError), encoding="utf-8-sig") as handle:
                return handle.readlines()
        except UnicodeDecodeError as error:
            raise DataError(f"{self.source}: not UTF-8 text ({error})") from None

    def __len__(self) -> int:
        return len(self._examples)

    def example(self, index: int) -> Example:
        return self._examples[self._check_index(index)]

    def where(self, index: int) -> str:
        return f"{shown(self.example(index).key)} ({self.source} line {self._lines[index]})"

    def _rows(self):
        lines = self._read_lines()
        return [(line, parse_json(lines[line - 1], f"{self.source} line {line}")) for line in self._lines]

    def field_values(self, name: str) -> list[str | None]:
        # Re-read on demand: keeping every row's other fields for a million images would cost memory for nothing.
        return [field_value(row.get(name), name, f"{self.source} line {line}") for line, row in self._rows()]

    def _fields_hint(self) -> str:
        line = self._lines[0]
        row = parse_json(self._read_lines()[line - 1], f"{self.source} line {line}")
        return f" (fields of line {line}: {sorted(row) if isinstance(row, dict) else []!r:.200})"

    def _file(self, index: int, real_folders: dict[str, str]) -> tuple[str, os.stat_result, str]:
        """Image `index`'s real path, its stat and how errors name it, once it is known to be a regular file inside the
        folder: the check every read and every digest-cache lookup goes through. `real_folders` caches the real path
        of each sub-folder for one pass, so a plain file costs one lstat, as the cache's stat did."""
        self._check_index(index)
        name = shown(os.path.join(self.root, self._examples[index].key))
        where = f"{self.source} line {self._lines[index]}"
        folder, base = os.path.split(self._names[index])
        real_folder = self._real_root if not folder else real_folders.get(folder)
        if real_folder is None:
            real_folder = real_folders[folder] = os.path.realpath(os.path.join(self._real_root, folder))
        path = os.path.join(real_folder, base)
        try:
            stat = os.lstat(path) if _inside(real_folder, self._real_root) else None
            if stat is None or stat_module.S_ISLNK(stat.st_mode):
                path = os.path.realpath(path)
                if not _inside(path, self._real_root):
                    raise DataError(f"{name}: resolves to {shown(path)}, outside the data folder {self._real_root} "
                                    f"(through a symlink; {where})")
                stat = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(f"{name}: image file missing ({where})") from None
        except OSError as error:  # a symlink loop, a permission denied on a sub-folder
            raise DataError(f"{name}: cannot read ({error.strerror}; {where})") from None
        if stat_module.S_ISDIR(stat.st_mode):
            raise DataError(f"{name}: is a folder, not an image file ({where})")
        if not stat_module.S_ISREG(stat.st_mode):
            raise DataError(f"{name}: not a regular file (a FIFO, device or socket; {where})")
        return path, stat, f"{name} ({where})"

    def image(self, index: int) -> Image.Image:
        path, stat, where = self._file(index, {})
        with open_regular(path, where, DataError, stat) as handle:
            return decode_image(handle, where)  # from the file: a huge one is refused from its header, not read whole

    def content_index(self, cache: DigestCache | None = None) -> np.ndarray:
        cache = cache or DigestCache(None)
        cache.prefetch(self._real_root)
        real_folders: dict[str, str] = {}
        blobs = []
        for i in range(len(self)):
            path, stat, where = self._file(i, real_folders)  # before the cache: it must not vouch for outside files
            blobs.append(cached_file_rows(cache, path, lambda: _probe(path, stat, where), stat))
        cache.flush()
        return rows_of(b"".join(blobs))


def _relative_file_name(value, where: str) -> str:
    """A metadata.jsonl file_name as a normalised path relative to the folder, refused (naming the line) if it is not a
    string, names no file, or leaves the folder by its text (an absolute path, '..'); symlinks are checked on use."""
    if not isinstance(value, str):
        raise DataError(f"{where}: file_name must be a string (a path relative to the folder), got {str(value)[:60]!r}")
    check_unicode(value, "file_name", where)
    if "\0" in value:
        raise DataError(f"{where}: file_name {value[:60]!r} holds a NUL character")
    if os.path.isabs(value):
        raise DataError(f"{where}: file_name {value[:60]!r} is an absolute path; file names are relative to the "
                        "data folder and must stay inside it")
    name = os.path.normpath(value)
    if name == os.curdir:
        raise DataError(f"{where}: file_name {value[:60]!r} names no file")
    if name == os.pardir or name.startswith(os.pardir + os.sep):
        raise DataError(f"{where}: file_name {value[:60]!r} leaves the data folder")
    return name


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(os.path.join(folder, ""))


def _probe(path: str, stat: os.stat_result, where: str) -> np.ndarray:
    with open_regular(path, where, DataError, stat) as handle:
        return probe_file(handle, where, DataError)


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
    """Parquet files (one, or the shards of a folder as 🤗 datasets writes them: data/train-00000-of-00004.parquet, …,
    read in sorted order as one set) with encoded image bytes and captions; the embedded default set uses this
    format. image_column: the column holding the images (bytes, or {'bytes': ...} structs)."""

    def __init__(self, path, caption_column: str = "text", image_column: str = "image", key_column: str = "file_name"):
        import pyarrow.parquet as pq

        paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
        if not paths:
            raise DataError("no parquet files given")
        self.source = paths[0] if len(paths) == 1 else os.path.commonpath(paths)  # the file, or the shards' folder
        self._images, self._examples, self._shards, self._columns = [], [], [], None
        for shard in paths:
            try:
                table = pq.read_table(shard)
            except Exception as error:
                raise DataError(f"{shard}: cannot read parquet ({error})") from None
            for column in (image_column, caption_column):
                if column not in table.column_names:
                    raise DataError(f"{shard}: no column {column!r} (columns: {table.column_names}); name the images' "
                                    "column with --image-column and the captions' with --caption-column")
            if self._columns is not None and table.column_names != self._columns:
                raise DataError(f"{shard}: columns {table.column_names} differ from {paths[0]}'s {self._columns}")
            self._columns = table.column_names
            images = table.column(image_column).to_pylist()
            start = len(self._images)
            self._images += [cell.get("bytes") if isinstance(cell, dict) else cell for cell in images]
            bad = next((row for row, data in enumerate(self._images[start:]) if not isinstance(data, bytes) or not data),
                       None)
            if bad is not None:  # a number, a string, a path-only struct, a null: refused now, not at the first read
                raise DataError(f"{shard} column {image_column!r} row {bad + 1}: holds {str(images[bad])[:80]!r}, not "
                                "encoded image bytes (expected binary, or a {'bytes': ...} struct as 🤗 datasets "
                                "writes)")
            keys = table.column(key_column).to_pylist() if key_column in table.column_names else None
            self._examples += [
                Example(start + i, str(keys[i]) if keys else (f"row-{i}" if len(paths) == 1 else
                                                              f"{os.path.basename(shard)}-row-{i}"),
                        _as_captions(caption, f"{shard} row {i + 1}"))
                for i, caption in enumerate(table.column(caption_column).to_pylist())]
            self._shards.append((shard, start, len(self._images)))
        if not self._examples:
            raise DataError(f"{self.source}: no rows")
        self._starts = [start for _, start, _ in self._shards]

    def _located(self, index: int) -> tuple[str, int]:
        """(shard, row within it) of example `index` (a binary search: where() names every row of a large set)."""
        shard, start, _ = self._shards[bisect.bisect_right(self._starts, index) - 1]
        return shard, index - start

    def __len__(self) -> int:
        return len(self._examples)

    def example(self, index: int) -> Example:
        return self._examples[self._check_index(index)]

    def where(self, index: int) -> str:
        shard, row = self._located(self._check_index(index))
        return f"{shown(self.example(index).key)} ({shard} row {row + 1})"

    def field_values(self, name: str) -> list[str | None]:
        import pyarrow.parquet as pq

        if name not in self._columns:
            return [None] * len(self)
        values = []
        for shard, start, _ in self._shards:
            column = pq.read_table(shard, columns=[name]).column(name).to_pylist()
            values += [field_value(value, name, f"{shard} row {i + 1}") for i, value in enumerate(column)]
        return values

    def _fields_hint(self) -> str:
        return f" (columns: {self._columns})"

    def image(self, index: int) -> Image.Image:
        return decode_image(self._images[self._check_index(index)], self.where(index))

    def content_index(self, cache: DigestCache | None = None) -> np.ndarray:
        store = cache or DigestCache(None)
        blobs = []
        for shard, start, stop in self._shards:  # each shard's rows cached while that file is unchanged
            def compute(start=start, stop=stop):
                return np.concatenate([probe_bytes(self._images[i], self.where(i), DataError)
                                       for i in range(start, stop)])
            blobs.append(cached_file_rows(store, os.path.abspath(shard), compute))
        if cache is not None:
            cache.flush()
        return rows_of(b"".join(blobs))


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
