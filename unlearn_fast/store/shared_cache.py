"""A JSON object (key -> value) that several processes add entries to, such as the losses measured under one model.

Reading needs no lock: every write is atomic (store.atomic), so a reader sees the old object or the new one. Adding
entries is a read-modify-write, so it runs under the file's lock (store.lock, ``<file>.lock``) and re-reads the file
there: two processes that add different keys at once both keep theirs. Compute new entries outside the lock (it is
held only for the merge), and add only keys whose value is the same whoever computes it: on a clash the later wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import DamagedArtefactError
from .integrity import read_checked
from .lock import FileLock

LOCK_SUFFIX = ".lock"


def read_entries(path: str | os.PathLike) -> dict[str, Any]:
    """The object in `path` ({} when there is none yet); a file that is not a JSON object names itself."""
    path = Path(path)
    try:
        data = read_checked(path)
    except FileNotFoundError:
        return {}
    try:
        entries = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        entries, reason = None, f"not valid JSON: {error}"
    else:
        reason = f"a JSON {type(entries).__name__}, not an object"
    if not isinstance(entries, dict):
        raise DamagedArtefactError(f"{path} is damaged ({reason}); delete it and run again: only its entries are "
                                   "computed again")
    return entries


def add_entries(path: str | os.PathLike, entries: dict[str, Any], indent: int | None = 1,
                checksum: bool = True) -> dict[str, Any]:
    """Add `entries` to the object in `path` (created when absent) and return the whole object as written.

    The keys other processes added since this one last read the file are kept. The keys keep their order (the file
    reads like the json.dump of the same dict). checksum: False for files of an output folder (no sidecar)."""
    path = Path(path)
    with FileLock(path.with_name(path.name + LOCK_SUFFIX)):
        merged = read_entries(path)
        merged.update(entries)
        write_json(path, merged, indent=indent, sort_keys=False, checksum=checksum)
    return merged
