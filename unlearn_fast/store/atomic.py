"""Atomic file writes: a crash leaves the old file or the new one, never half of one; each file with its checksum."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from .integrity import file_digest, sum_path, sum_text

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], Any], checksum: bool = True) -> None:
    """Write ``path`` through ``write_fn(binary_file)`` into a temp file beside it, then ``os.replace`` it into place.

    If ``write_fn`` raises, the temp file is removed and any previous file at ``path`` is left untouched. checksum:
    also write ``<path>.sum`` (store.integrity), just before the file moves into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        if checksum:
            record = sum_text(*file_digest(Path(tmp)))
            atomic_write(sum_path(path), lambda f: f.write(record.encode()), checksum=False)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is not None:
            raise
        # a write into the temp file names no file (ENOSPC, EIO): name the artefact being written
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = True,
               checksum: bool = True) -> None:
    """``obj`` as JSON, atomically. The serialisation runs before anything is written, so an object that cannot be
    written (a value JSON has no form for) leaves the old file as it was. checksum: False for files of an output folder
    (they carry no sidecar, see store.integrity)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    write_text(path, text, checksum=checksum)


def write_text(path: str | os.PathLike, text: str, checksum: bool = True) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), checksum=checksum)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
