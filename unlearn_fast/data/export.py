"""Write any captioned set in a user format (an image folder with metadata.jsonl, or webdataset shards).

Images are written as PNG, so pixels survive the round trip exactly; one caption is written as a string, several as a
list (metadata.jsonl) or a ``.json`` member (webdataset). Re-opening the export gives the same keys when they are
``.png`` file names, as in the embedded default set; other keys keep their stem and get a ``.png`` extension.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

from .dataset import CaptionedImages, DataError


def export_imagefolder(dataset: CaptionedImages, out_dir: str, caption_column: str = "text") -> int:
    """Write PNGs and ``metadata.jsonl`` into ``out_dir`` (new or empty); returns the number of images."""
    _prepare_empty_folder(out_dir)
    names = _png_names(dataset)
    rows = []
    for index, name in enumerate(names):
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dataset.image(index).save(path, format="PNG")
        captions = dataset.captions(index)
        rows.append({"file_name": name, caption_column: captions[0] if len(captions) == 1 else list(captions)})
    # metadata.jsonl last: an interrupted export is then not mistaken for a complete image folder.
    with open(os.path.join(out_dir, "metadata.jsonl"), "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(names)


def export_webdataset(
    dataset: CaptionedImages, out_dir: str, images_per_shard: int = 1000, caption_column: str = "text"
) -> list[str]:
    """Write ``shard-000000.tar``, ``shard-000001.tar``, ... into ``out_dir`` (new or empty); returns their paths."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be at least 1, got {images_per_shard}")
    _prepare_empty_folder(out_dir)
    # Webdataset cuts a sample key at the first dot of the file name, so the stem must not hold one.
    names = _png_names(dataset, dotless_stem=True)
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


def _prepare_empty_folder(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    if os.listdir(out_dir):
        raise FileExistsError(f"{out_dir}: export folder is not empty")


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
