"""Webdataset ``.tar`` shards with random access by index.

The ``webdataset`` library streams samples in order; attribution needs image i on demand, so the tar members are
indexed once at open with the standard library and images are read later by seeking to their recorded offset.
Naming follows webdataset: a sample's key is the member path up to the first dot of its file name, its extension
(lower-cased) is the rest — ``000123.jpg`` + ``000123.txt`` (or ``000123.json`` with a caption field) form one sample.
The dataset key of a sample is its image member's name (``000123.jpg``), like the file name of an image folder.
Members are only ever read by offset within their shard, never extracted, so a member name cannot reach outside it;
names must be valid UTF-8 (keys end up in digests and reports), and images obey content.MAX_IMAGE_PIXELS like any other.
"""
from __future__ import annotations

import os
import posixpath
import re
import tarfile
from dataclasses import dataclass

from PIL import Image

import numpy as np

from .content import DigestCache, cached_file_rows, empty_index, probe_bytes, rows_of
from .dataset import (CaptionedImages, DataError, Example, _as_captions, check_unicode, decode_image, field_value,
                      parse_json)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a sample has several


@dataclass(frozen=True)
class _ImageMember:
    shard: int
    offset: int
    size: int


def expand_shards(spec: str) -> list[str]:
    """The shard files of ``spec``: one .tar, a folder of .tar files (sorted), or a brace pattern."""
    if "{" in spec:
        shards = expand_braces(spec)
    elif os.path.isdir(spec):
        shards = [os.path.join(spec, name) for name in sorted(os.listdir(spec)) if name.endswith(".tar")]
        if not shards:
            raise DataError(f"{spec}: folder holds no .tar shards")
    else:
        shards = [spec]
    for shard in shards:
        if not os.path.isfile(shard):
            raise DataError(f"{shard}: no such shard file (from {spec!r})")
    return shards


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → a-000.tar, a-001.tar, a-002.tar; ``{x,y}`` lists alternatives (as braceexpand does)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        padded = any(bound.startswith("0") and bound != "0" for bound in (first, last))  # shard-{000..009}
        width = max(len(first), len(last)) if padded else 0
        step = 1 if int(last) >= int(first) else -1
        parts = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        parts = body.split(",")
    return [expanded for part in parts for expanded in expand_braces(head + part + tail)]


def split_member_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """Webdataset's key/extension split: the key ends at the first dot of the file name (directories kept)."""
    directory, file_name = posixpath.split(name)  # tar member names always use "/"
    if "." not in file_name or file_name.startswith("."):
        return None, None
    stem, extension = file_name.split(".", 1)
    return posixpath.join(directory, stem), extension.lower()


class WebDatasetShards(CaptionedImages):
    """Samples of webdataset shards, in shard order then tar order; captions from ``.json[caption_column]``, else ``.txt``."""

    def __init__(self, spec: str, caption_column: str = "text"):
        self.source = spec
        self.shards = expand_shards(spec)
        self._examples: list[Example] = []
        self._images: list[_ImageMember] = []
        self._metadata: list[dict | None] = []  # each sample's .json object (None without one): metadata_field
        for shard_index, shard in enumerate(self.shards):
            for key, members in self._read_samples(shard):
                where = f"{shard} sample {key!r}"
                image_extension = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
                if image_extension is None:
                    raise DataError(f"{where}: no image (members: {sorted(members)}; expected one of {IMAGE_EXTENSIONS})")
                captions = _sample_captions(members, caption_column, where)
                image = members[image_extension]
                self._examples.append(Example(len(self._examples), f"{key}.{image_extension}", captions))
                self._images.append(_ImageMember(shard_index, image["offset"], image["size"]))
                self._metadata.append(_sample_metadata(members, where))
        if not self._examples:
            raise DataError(f"{spec}: the shards hold no samples")

    @staticmethod
    def _read_samples(shard: str):
        """(key, {extension: member}) per sample; caption members carry their text, image members their offset."""
        samples: dict[str, dict[str, dict]] = {}
        try:
            with tarfile.open(shard, mode="r:") as tar:  # uncompressed only: images are read back by byte offset
                for member in tar:
                    key, extension = split_member_name(member.name)
                    if not member.isfile() or key is None:
                        continue
                    # tarfile decodes undecodable name bytes as lone surrogates
                    check_unicode(member.name, "member name", shard)
                    members = samples.setdefault(key, {})
                    if extension in members:
                        raise DataError(f"{shard} sample {key!r}: duplicate member {member.name!r}")
                    entry = {"name": member.name, "offset": member.offset_data, "size": member.size}
                    if extension in ("txt", "json"):
                        entry["data"] = tar.extractfile(member).read()
                    members[extension] = entry
        except (tarfile.TarError, OSError) as error:
            raise DataError(f"{shard}: cannot read as an uncompressed tar shard ({error})") from None
        return samples.items()

    def __len__(self) -> int:
        return len(self._examples)

    def example(self, index: int) -> Example:
        return self._examples[self._check_index(index)]

    def where(self, index: int) -> str:
        member = self._images[self._check_index(index)]
        return f"{self.shards[member.shard]} member {self._examples[index].key!r}"

    def field_values(self, name: str) -> list[str | None]:
        return [field_value(meta.get(name), name, self.where(i)) if meta else None
                for i, meta in enumerate(self._metadata)]

    def _bytes(self, index: int) -> bytes:
        member = self._images[self._check_index(index)]
        # A fresh handle per read keeps the dataset safe to share with forked data-loader workers.
        with open(self.shards[member.shard], "rb") as handle:
            handle.seek(member.offset)
            return handle.read(member.size)

    def image(self, index: int) -> Image.Image:
        return decode_image(self._bytes(index), self.where(index))

    def content_index(self, cache: DigestCache | None = None) -> np.ndarray:
        """Cached per shard file: a rerun costs one stat per shard."""
        cache = cache or DigestCache(None)
        shard_of = np.array([m.shard for m in self._images])
        parts = []
        for number, shard in enumerate(self.shards):
            rows = np.flatnonzero(shard_of == number)
            parts.append(cached_file_rows(cache, os.path.abspath(shard), lambda: np.concatenate(
                [empty_index(0)] + [probe_bytes(self._bytes(int(i)), self.where(int(i)), DataError) for i in rows])))
        cache.flush()
        return rows_of(b"".join(parts))


def _sample_metadata(members: dict[str, dict], where: str) -> dict | None:
    """The sample's .json object (its other keys are metadata fields), None when it has none."""
    if "json" not in members:
        return None
    meta = parse_json(members["json"]["data"], where, members["json"]["name"])
    return meta if isinstance(meta, dict) else None


def _sample_captions(members: dict[str, dict], caption_column: str, where: str) -> tuple[str, ...]:
    if "json" in members:
        meta = parse_json(members["json"]["data"], where, members["json"]["name"])
        if isinstance(meta, dict) and caption_column in meta:
            return _as_captions(meta[caption_column], f"{where} ({members['json']['name']}[{caption_column!r}])")
    if "txt" in members:
        try:
            text = members["txt"]["data"].decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{where}: {members['txt']['name']} is not UTF-8 text ({error})") from None
        return _as_captions(text, f"{where} ({members['txt']['name']})")
    raise DataError(f"{where}: no caption (expected a .txt member or a .json member with a {caption_column!r} field)")
