"""The work directory: a folder of named artefacts, bound by its manifest to the content of the inputs that made them.

- ``manifest.json`` records a fingerprint per input (each model part, the images' bytes, the captions) and the
  settings that change numbers. ``WorkDir.bind`` writes it on first use and later refuses inputs that differ, naming
  what differs; for inputs bound row by row (the images, the captions) it names the first differing row, e.g. the
  file whose pixels changed. No artefact can be read or written before ``bind``.
- Each artefact declares what it depends on (``Binding.depends``), so ``bind(..., overwrite=True)`` deletes only what
  the new inputs invalidate and keeps the rest (the refusal says beforehand what it would delete); inputs that match
  delete nothing.
- One ``FileLock`` per work directory (``.lock``: host, pid, command; a dead owner's lock is taken over): commands that
  share a folder take turns at every step that reads or writes shared artefacts.
- Every file is written atomically (store.atomic) and long passes write ``ChunkedArray`` s (store.chunked).

Layout (kronfluence-style named artefacts)::

    work_dir/manifest.json            inputs' fingerprints and settings (written last when binding)
    work_dir/inputs/<input>.npy       per-row digests of the row-bound inputs (to name the first differing row)
    work_dir/.lock                    held while a command works in the folder
    work_dir/<name>.safetensors | <name>.json | <name>.npy
    work_dir/<name>/meta.json, data.npy, done.npy       (a ChunkedArray)
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .atomic import TMP_SUFFIX, atomic_write, write_json, write_npy
from .chunked import ChunkedArray, load_json_checked
from .errors import HINT, DamagedArtefactError, StoreMismatchError, UnsafePathError
from .integrity import SUM_SUFFIX, read_checked, repair_hint
from .lock import FileLock, LockOwner

MANIFEST = "manifest.json"
INPUTS = "inputs"
LOCK = ".lock"
FORMAT_VERSION = 2
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_BOOKKEEPING = (MANIFEST, INPUTS, LOCK, LOCK + ".break")


def _normalise(obj: Any) -> Any:
    """What ``obj`` reads back as from JSON (tuples become lists), so stored and new values compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True))


def recorded_sources(path: str | os.PathLike) -> dict | None:
    """Where the work directory's inputs were read from ({"model", "variant", "model_config", "lora", "data",
    "caption_column", "image_column", "subset", "base_model"}), None for a new folder ({} for one prepared before
    sources were recorded)."""
    manifest = read_manifest(path)
    return None if manifest is None else dict(manifest.get("sources") or {})


def _bound(manifest: dict | None) -> dict | None:
    """What a manifest binds (its sources aside: the same content may be read from another place)."""
    return None if manifest is None else {k: v for k, v in manifest.items() if k != "sources"}


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of the work directory at ``path`` (inputs and settings), or None if it has none yet; a damaged
    one is a StoreMismatchError naming it (the folder's binding is lost with it: nothing in it can be trusted)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        record = json.loads(read_checked(manifest))
    except (DamagedArtefactError, ValueError) as error:
        reason = error if isinstance(error, DamagedArtefactError) else f"{manifest} is not valid JSON ({error})"
        raise StoreMismatchError(f"{str(reason).split('; ')[0]}: the record of what this work directory was built "
                                 "from is lost, so nothing in it can be trusted; use another --work-dir") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings", {}), dict):
        raise StoreMismatchError(f"{manifest} is not a work directory's manifest; use another --work-dir")
    return record


@dataclass
class Binding:
    """What a work directory is bound to.

    inputs: name -> fingerprint ("model.unet", "data.images", ...). settings: the numbers that change results (each
    top-level key compared on its own, as "settings.<key>"). rows: per-row digests (N, k) uint8 of some inputs, kept
    in the folder to name the first differing row; describe_row(input, row) names that row for a person.
    depends: top-level artefact (entry name or stem) -> the input names / "settings.<key>" it depends on (a prefix
    such as "model" covers "model.unet"); artefacts not listed depend on everything. keep: entries no input invalidates (logs).
    """

    inputs: dict[str, str]
    settings: dict
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    describe_row: Callable[[str, int], str] | None = None
    depends: dict[str, tuple[str, ...]] = field(default_factory=dict)
    keep: tuple[str, ...] = ("log.txt",)
    sources: dict = field(default_factory=dict)  # where the inputs were read from: recorded, never compared

    def manifest(self) -> dict:
        record = {"format": FORMAT_VERSION, "inputs": dict(self.inputs), "settings": dict(self.settings)}
        if self.sources:
            record["sources"] = dict(self.sources)
        return _normalise(record)

    def invalidated_by(self, entry: str, changed: set[str]) -> bool:
        """Whether folder entry `entry` ("fisher.safetensors", "latents") reads anything in `changed`; an artefact is
        named in depends by its entry name or its stem ("fisher")."""
        if entry in self.keep:
            return False
        deps = self.depends.get(entry, self.depends.get(entry.split(".", 1)[0]))
        if "format" in changed or deps is None:
            return True
        return any(key == dep or key.startswith(dep + ".") for dep in deps for key in changed)


class WorkDir:
    """A folder of named artefacts, bound by its manifest to the inputs that produced them."""

    def __init__(self, path: str | os.PathLike, on_wait: Callable[[LockOwner], None] | None = None,
                 lock_timeout: float | None = None):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreMismatchError(f"--work-dir {self.path} is a file, not a folder; give a folder (new or prepared)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(error.errno, f"cannot create the work directory ({os.strerror(error.errno)})",
                          str(self.path)) from None
        self.manifest: dict | None = None
        self.lock = FileLock(self.path / LOCK, on_wait=on_wait, timeout=lock_timeout, read_only_ok=True)

    def __repr__(self) -> str:
        return f"WorkDir({str(self.path)!r})"

    # -- manifest

    def bind(self, binding: Binding, overwrite: bool = False) -> list[str]:
        """Tie this folder to its inputs: record them on first use, check them on every later use.

        Raises StoreMismatchError naming every input and setting that differs, and what --overwrite would delete.
        ``overwrite=True`` instead deletes exactly the artefacts those differences invalidate and records the new
        inputs; returns the names deleted (none when the inputs match).
        """
        with self.lock:
            new = binding.manifest()
            stored = read_manifest(self.path)
            entries = self._contents()
            if stored is None:
                if entries:  # never adopt (or delete) files whose origin is unknown
                    names = ", ".join(sorted(p.name for p in entries)[:5])
                    raise StoreMismatchError(f"{self.path} is not empty ({names}) but has no {MANIFEST}: it is not a "
                                             "work directory, or its manifest was lost; use another --work-dir")
                self._record(binding, new)
                return []
            differences = self._differences(stored, binding)
            if not differences:
                if new.get("sources") and stored.get("sources") != new["sources"]:
                    write_json(self.path / MANIFEST, new)  # the same content read from elsewhere (a moved folder)
                self.manifest = new
                return []
            doomed = [p for p in entries if binding.invalidated_by(p.name, set(differences))]
            if not overwrite:
                raise StoreMismatchError(
                    f"work directory {self.path} was built from other inputs:\n  "
                    + "\n  ".join(differences.values()) + f"\n{HINT} (--overwrite deletes {_listing(doomed)}"
                    + (f" and keeps {_listing([p for p in entries if p not in doomed])})" if len(doomed) < len(entries)
                       else ")"))
            for entry in doomed:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            self._record(binding, new)
            return sorted(p.name for p in doomed if not p.name.endswith(SUM_SUFFIX))

    @contextmanager
    def locked(self):
        """Hold the folder's lock, and check that no other command rebound the folder (--overwrite with other inputs)
        since this one bound it: artefacts made for one binding must never land in a folder bound to another."""
        with self.lock:
            current = read_manifest(self.path)
            if self.manifest is not None and _bound(current) != _bound(self.manifest):
                raise StoreMismatchError(f"work directory {self.path} was rebound to other inputs by another command "
                                         "since this one started (an --overwrite); run this command again")
            yield self

    def _record(self, binding: Binding, manifest: dict) -> None:
        for name, rows in binding.rows.items():  # the manifest is written last: it commits the binding
            write_npy(self.path / INPUTS / f"{name}.npy", np.ascontiguousarray(rows, dtype=np.uint8))
        write_json(self.path / MANIFEST, manifest)
        self.manifest = manifest

    def _contents(self) -> list[Path]:
        """Every artefact in the folder (not the manifest, inputs or lock); leftover temp files of killed atomic
        writes are removed."""
        entries = []
        for entry in self.path.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and entry.is_file():
                with contextlib.suppress(OSError):  # a read-only folder keeps them, harmlessly
                    entry.unlink(missing_ok=True)
            elif (entry.name not in _BOOKKEEPING and not entry.name.startswith(LOCK + ".")
                  and entry.name.removesuffix(SUM_SUFFIX) not in _BOOKKEEPING):
                entries.append(entry)
        return entries

    def _differences(self, stored: dict, binding: Binding) -> dict[str, str]:
        """{changed key: one line saying how}, e.g. "data.images: 1 of 24 rows differ, first row 4: cat.png"."""
        if stored.get("format") != FORMAT_VERSION:
            return {"format": f"format version: was {stored.get('format')!r}, now {FORMAT_VERSION} (made by another "
                              "version of unlearn_fast)"}
        lines = {}
        old_inputs, new_inputs = stored.get("inputs", {}), binding.inputs
        for name in sorted(set(old_inputs) | set(new_inputs)):
            if old_inputs.get(name) != new_inputs.get(name):
                lines[name] = self._input_difference(name, old_inputs.get(name), new_inputs.get(name), binding)
        old_settings, new_settings = stored.get("settings", {}), _normalise(binding.settings)
        for key in sorted(set(old_settings) | set(new_settings)):
            was = repr(old_settings[key]) if key in old_settings else "(absent)"
            now = repr(new_settings[key]) if key in new_settings else "(absent)"
            if was != now:
                lines[f"settings.{key}"] = f"setting {key!r}: was {was}, now {now}"
        return lines

    def _input_difference(self, name: str, was, now, binding: Binding) -> str:
        line = f"{name}: was {was!r}, now {now!r}"
        old_path = self.path / INPUTS / f"{name}.npy"
        if name not in binding.rows or not old_path.is_file():
            return line
        old, new = np.load(old_path), np.asarray(binding.rows[name], np.uint8)
        common = min(len(old), len(new))
        differ = np.flatnonzero((old[:common] != new[:common]).reshape(common, -1).any(axis=1))
        count = len(differ) + abs(len(old) - len(new))
        first = int(differ[0]) if len(differ) else common
        where = binding.describe_row(name, first) if binding.describe_row and first < len(new) else f"row {first + 1}"
        size = f" ({len(old)} rows then, {len(new)} now)" if len(old) != len(new) else ""
        return f"{line}: {count} of {max(len(old), len(new))} rows differ{size}, the first at {where}"

    # -- named artefacts

    def artefact_path(self, name: str, suffix: str = "") -> Path:
        """The path of artefact ``name`` ("fisher", "losses/pre", ...); refuses names that would leave the folder."""
        if self.manifest is None:
            raise RuntimeError(f"{self}: call bind(binding) before using artefacts, so they cannot be mixed with "
                               "artefacts from other inputs")
        parts = name.split("/")
        if suffix and not name.endswith(suffix):
            name += suffix
        if not all(_NAME_PART.fullmatch(p) for p in parts) or name.split("/")[0] in _BOOKKEEPING:
            raise ValueError(f"bad artefact name {name!r}: use letters, digits, '_', '-', '.', and '/' for folders")
        path = self.path / name
        inside = self.path
        for part in name.split("/"):  # never follow a link out of the folder (a write would land outside it)
            inside = inside / part
            if inside.is_symlink():
                raise UnsafePathError(f"{inside} is a symbolic link (to {os.readlink(inside)}); unlearn-fast writes "
                                      "and reads only real files and folders inside the work directory: remove the "
                                      "link")
        return path

    def exists(self, name: str, suffix: str = "") -> bool:
        return self.artefact_path(name, suffix).exists()

    def save_json(self, name: str, obj: Any) -> Path:
        path = self.artefact_path(name, ".json")
        write_json(path, obj)
        return path

    def save_bytes(self, name: str, data: bytes) -> Path:
        """A file of given bytes (e.g. a PNG), named with its extension."""
        path = self.artefact_path(name)
        atomic_write(path, lambda f: f.write(data))
        return path

    def load_json(self, name: str) -> Any:
        return load_json_checked(self.artefact_path(name, ".json"))

    def save_npy(self, name: str, array: np.ndarray) -> Path:
        path = self.artefact_path(name, ".npy")
        write_npy(path, np.asarray(array))
        return path

    def load_npy(self, name: str) -> np.ndarray:
        path = self.artefact_path(name, ".npy")
        try:
            return np.load(io.BytesIO(read_checked(path)), allow_pickle=False)
        except ValueError as error:
            raise DamagedArtefactError(f"{path} is damaged (not a valid array: {error}); {repair_hint(path)}") from None

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        """Save tensors as ``<name>.safetensors`` with string metadata (safetensors allows only str -> str)."""
        from safetensors.torch import save


        metadata = dict(metadata or {})
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; got {bad!r} (json.dumps the values)")
        blob = sorted_header(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))
        path = self.artefact_path(name, ".safetensors")
        atomic_write(path, lambda f: f.write(blob))
        return path

    def load_tensors(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Load ``<name>.safetensors`` -> (tensors on CPU, metadata)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.artefact_path(name, ".safetensors")
        blob = read_checked(path)
        try:
            header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
            tensors = load(blob)
        except (SafetensorError, ValueError, OverflowError) as error:
            raise DamagedArtefactError(f"{path} is damaged (not a safetensors file: {error}); "
                                       f"{repair_hint(path)}") from None
        return tensors, dict(header.get("__metadata__") or {})

    def chunked(self, name: str, shape: tuple[int, ...], chunk_rows: int, dtype: str = "float32") -> ChunkedArray:
        """Open (creating on first use) the array ``name`` of ``shape`` (float32, or float16), done-mask over
        ``chunk_rows`` rows."""
        return ChunkedArray(self.artefact_path(name), tuple(int(s) for s in shape), int(chunk_rows), dtype)


def sorted_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes its metadata in hash order,
    so identical runs would otherwise write different bytes."""
    length = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data's offsets count from the header's end; it stays 8-aligned
    return len(header).to_bytes(8, "little") + header + blob[8 + length:]


def _listing(entries: list[Path]) -> str:
    if not entries:
        return "nothing"
    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(entries) if not p.name.endswith(SUM_SUFFIX)]
    if not names:
        return "nothing"
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
