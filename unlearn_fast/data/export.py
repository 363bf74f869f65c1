"""Write any captioned set in a user format (an image folder with metadata.jsonl, or webdataset shards).

Images are written as PNG, so pixels survive the round trip exactly; one caption is written as a string, several as a
list (metadata.jsonl) or a ``.json`` member (webdataset). Re-opening the export gives the same keys when they are
``.png`` file names, as in the embedded default set; other keys keep their stem and get a ``.png`` extension.

The export folder must be new or empty (an image folder may also be an earlier export of the same set, which is
rewritten): anything else is refused, naming the folder, before a byte is written.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

from ..errors import OutputError
from .dataset import CaptionedImages, DataError, check_unicode


class ExportFolderError(DataError, OutputError, FileExistsError):
    """An export folder that holds other files, or is not a folder. A UserInputError, which the CLI reports in one line;
    also a FileExistsError, which is what callers caught before."""


def export_imagefolder(dataset: CaptionedImages, out_dir: str, caption_column: str = "text") -> int:
    """Write PNGs and ``metadata.jsonl`` into ``out_dir`` (new, empty, or an earlier export of the same file names and
    captions); returns the number of images."""
    entries = _entries(out_dir)
    if entries and "metadata.jsonl" not in entries:
        raise _not_empty(out_dir, entries, ", nor an earlier export")
    names = _png_names(dataset)
    rows = []
    for index, name in enumerate(names):
        captions = [check_unicode(c, "caption", f"{dataset.source} row {index}") for c in dataset.captions(index)]
        rows.append({"file_name": name, caption_column: captions[0] if len(captions) == 1 else captions})
    metadata = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if entries and not _is_earlier_export(out_dir, names, metadata):
        raise _not_empty(out_dir, entries, ", nor an earlier export of this set")
    _create(out_dir)
    # metadata.jsonl last (and, when rewriting an earlier export, removed first): an interrupted export is then not
    # mistaken for a complete image folder.
    metadata_path = os.path.join(out_dir, "metadata.jsonl")
    if os.path.lexists(metadata_path):
        os.remove(metadata_path)
    for index, name in enumerate(names):
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dataset.image(index).save(path, format="PNG")
    with open(metadata_path, "wb") as handle:
        handle.write(metadata)
    return len(names)


def export_webdataset(
    dataset: CaptionedImages, out_dir: str, images_per_shard: int = 1000, caption_column: str = "text"
) -> list[str]:
    """Write ``shard-000000.tar``, ``shard-000001.tar``, ... into ``out_dir`` (new or empty); returns their paths."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be at least 1, got {images_per_shard}")
    entries = _entries(out_dir)
    if entries:
        raise _not_empty(out_dir, entries)
    # Webdataset cuts a sample key at the first dot of the file name, so the stem must not hold one.
    names = _png_names(dataset, dotless_stem=True)
    _create(out_dir)
    shards = []
    for start in range(0, len(names), images_per_shard):
        path = os.path.join(out_dir, f"shard-{len(shards):06d}.tar")
        with tarfile.open(path + ".partial", "w") as tar:
            for index in range(start, min(start + images_per_shard, len(names))):
                stem = names[index][: -len(".png")]
                buffer = io.BytesIO()
                dataset.image(index).save(buffer, format="PNG")
                _add_member(tar, f"{stem}.png", buffer.getvalue())
                captions = dataset.captions(index)
                if len(captions) == 1:
                    _add_member(tar, f"{stem}.txt", captions[0].encode("utf-8"))
                else:
                    _add_member(tar, f"{stem}.json", json.dumps({caption_column: list(captions)}).encode("utf-8"))
        os.replace(path + ".partial", path)  # a shard appears only once complete
        shards.append(path)
    return shards


def _entries(out_dir: str) -> list[str]:
    """What the export folder holds ([] when it does not exist yet); refused if it is not a folder."""
    if not os.path.lexists(out_dir):
        return []
    if not os.path.isdir(out_dir):
        raise ExportFolderError(f"{out_dir}: exists and is not a folder (the export needs a new or empty folder)")
    try:
        return os.listdir(out_dir)
    except OSError as error:
        raise ExportFolderError(f"{out_dir}: cannot list the export folder ({error.strerror})") from None


def _not_empty(out_dir: str, entries: list[str], nor: str = "") -> ExportFolderError:
    shown = ", ".join(repr(entry) for entry in sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    return ExportFolderError(f"{out_dir}: export folder is not empty{nor} (it holds {shown}); choose a new or empty "
                             "folder")


def _create(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise ExportFolderError(f"{out_dir}: cannot create the export folder ({error.strerror})") from None


def _is_earlier_export(out_dir: str, names: list[str], metadata: bytes) -> bool:
    """Whether `out_dir` holds what this export writes and nothing else: its metadata.jsonl byte for byte (so the same
    file names and captions), PNGs of those names, no symlink. Rewriting it then loses nothing."""
    metadata_path = os.path.join(out_dir, "metadata.jsonl")
    expected = {os.path.normpath(name) for name in names} | {"metadata.jsonl"}

    def refuse(error: OSError):
        raise error

    try:
        if not os.path.isfile(metadata_path) or os.path.islink(metadata_path) or \
                os.path.getsize(metadata_path) != len(metadata):
            return False
        with open(metadata_path, "rb") as handle:
            if handle.read() != metadata:
                return False
        for folder, subfolders, files in os.walk(out_dir, onerror=refuse):
            if any(os.path.islink(os.path.join(folder, entry)) for entry in subfolders + files):
                return False
            if any(os.path.relpath(os.path.join(folder, entry), out_dir) not in expected for entry in files):
                return False
    except OSError:
        return False
    return True


def _png_names(dataset: CaptionedImages, dotless_stem: bool = False) -> list[str]:
    """One relative ``.png`` path per image, derived from its key; refuses keys that collide or escape the folder."""
    names: list[str] = []
    first_row: dict[str, int] = {}
    for index in range(len(dataset)):
        key = dataset.key(index)
        directory, stem = os.path.split(os.path.splitext(key)[0])
        if dotless_stem:
            stem = stem.replace(".", "_")
        name = os.path.join(directory, stem + ".png")
        check_unicode(key, "key", f"{dataset.source} row {index}")
        if "\0" in name:
            raise DataError(f"{dataset.source} row {index}: key {key!r} holds a NUL character, which no file name can")
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise DataError(f"{dataset.source} row {index}: key {key!r} would be written outside the export folder")
        if name in first_row:
            raise DataError(f"{dataset.source} rows {first_row[name]} and {index}: keys both export as {name!r}")
        first_row[name] = index
        names.append(name)
    return names


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644  # mtime stays 0, so the same data gives byte-identical shards
    tar.addfile(info, io.BytesIO(data))
