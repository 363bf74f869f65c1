"""The files an evaluation writes into its output folder (results, records, caches read back on a rerun, pictures):
each written atomically (store.atomic), so a killed run leaves the old file or the new one, never part of one.

As an output folder's files, they carry no checksum sidecar (store.integrity). JSON keeps its keys in the order they
were made, laid out as ``json.dump(obj, handle, indent=1)`` did before these writes were atomic.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..store import atomic_write
from ..store import write_json as _store_write_json
from ..store import write_text as _store_write_text


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    _store_write_json(path, obj, indent=indent, sort_keys=False, checksum=False)


def write_text(path: str | os.PathLike, text: str) -> None:
    _store_write_text(path, text, checksum=False)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image as a PNG."""
    from PIL import Image

    atomic_write(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"), checksum=False)
