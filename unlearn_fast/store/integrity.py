"""What an artefact's bytes should be: a digest written with every file and every chunk, checked when read.

Every file the store writes gets a sidecar ``<file>.sum`` (JSON: its byte size and blake2b-128 digest), written just
before the file itself is moved into place, so a new artefact is either absent or complete with its sum. Small files
(JSON, npy, safetensors) are checked against their sum each time they are read. A chunked array's ``data.npy`` is too
large to hash on every open: its byte size is checked on open and each chunk's digest (``digests.npy``) by
``verify`` (``unlearn-fast verify WORK_DIR``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import DamagedArtefactError

SUM_SUFFIX = ".sum"
FOLDER_SUMS = "checksums.json"  # an output folder's files, listed in one file (no sidecar beside each picture)
_BLOCK = 1 << 20


def digest_of(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def sum_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUM_SUFFIX)


def sum_text(size: int, digest: str) -> str:
    """The content of a ``.sum`` file (read back by read_sum)."""
    return json.dumps({"bytes": size, "blake2b": digest}, sort_keys=True) + "\n"


def read_sum(path: Path) -> dict | None:
    """The recorded size and digest of `path`; None when it has none (files written before sums existed)."""
    record = sum_path(path)
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        return {"bytes": int(data["bytes"]), "blake2b": str(data["blake2b"])}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedArtefactError(f"{record}: unreadable checksum ({type(error).__name__}); "
                                   f"{repair_hint(path)}") from None


def repair_hint(path: Path) -> str:
    work_dir = find_work_dir(path)
    where = work_dir if work_dir is not None else "WORK_DIR"
    return f"`unlearn-fast verify {where} --repair` removes what is damaged, and the next run recomputes only that"


def find_work_dir(path: Path) -> Path | None:
    """The work directory holding `path` (the nearest folder above it with a manifest)."""
    for folder in Path(path).absolute().parents:
        if (folder / "manifest.json").is_file():
            return folder
    return None


def read_checked(path: str | os.PathLike) -> bytes:
    """The bytes of an artefact, checked against its sum (when it has one): a DamagedArtefactError names the file."""
    path = Path(path)
    data = path.read_bytes()
    problem = mismatch(path, data)
    if problem:
        raise DamagedArtefactError(f"{path} is damaged ({problem}); {repair_hint(path)}")
    return data


def mismatch(path: Path, data: bytes) -> str | None:
    """What is wrong with `data` as the content of `path` (None when it matches its sum, or has none)."""
    recorded = read_sum(path)
    if recorded is None:
        return None
    if len(data) != recorded["bytes"]:
        return f"{len(data)} bytes, its checksum says {recorded['bytes']}"
    if digest_of(data) != recorded["blake2b"]:
        return "its bytes differ from its checksum"
    return None


def file_digest(path: Path) -> tuple[int, str]:
    """(size, digest) of a file of any size, streamed."""
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def write_folder_sums(folder: str | os.PathLike) -> None:
    """checksums.json: {relative path: {bytes, blake2b}} of every file under a finished output folder."""
    folder = Path(folder)
    listing = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != FOLDER_SUMS:
            size, digest = file_digest(path)
            listing[path.relative_to(folder).as_posix()] = {"bytes": size, "blake2b": digest}
    (folder / FOLDER_SUMS).write_text(json.dumps(listing, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def folder_sums(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / FOLDER_SUMS
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise DamagedArtefactError(f"{path}: unreadable ({type(error).__name__})") from None


def read_listed(folder: str | os.PathLike, name: str) -> bytes:
    """A file of an output folder, checked against the folder's checksums.json (when it has one)."""
    path = Path(folder) / name
    data = path.read_bytes()
    recorded = (folder_sums(folder) or {}).get(name)
    if recorded is not None and (len(data) != recorded["bytes"] or digest_of(data) != recorded["blake2b"]):
        raise DamagedArtefactError(f"{path} is damaged (its bytes differ from {Path(folder) / FOLDER_SUMS}); "
                                   "write it again (unlearn-fast attribute, or report from an intact copy)")
    return data


def check_folder(folder: str | os.PathLike) -> tuple[int, list[tuple[str, str]]]:
    """(files checked, [(relative path, problem)]) of an output folder against its checksums.json."""
    listing = folder_sums(folder) or {}
    problems = []
    for name, recorded in sorted(listing.items()):
        path = Path(folder) / name
        if not path.is_file():
            problems.append((name, "missing"))
            continue
        size, digest = file_digest(path)
        if size != recorded["bytes"]:
            problems.append((name, f"{size} bytes, its checksum says {recorded['bytes']}"))
        elif digest != recorded["blake2b"]:
            problems.append((name, "its bytes differ from its checksum"))
    return len(listing), problems
