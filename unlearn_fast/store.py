"""The work directory: where artefacts live and how they are trusted.

A work directory holds everything a run computes (Fisher, pre-unlearning losses, scores, ...) as named artefacts:
safetensors, json, npy files and chunked float32 arrays. Three rules make its contents trustworthy:

- ``manifest.json`` records the inputs that produced the folder (model fingerprint, data fingerprint, settings).
  ``WorkDir.bind`` writes it on first use and later refuses inputs that differ, saying which key differs and how
  (TRAK's metadata that rejects a mismatched store). No artefact can be read or written before ``bind``.
- Every file is written atomically (temp file in the same folder, fsync, ``os.replace``): a crash leaves the old
  file or the new one, never half of one.
- Long passes write a ``ChunkedArray``: a memmap plus a done-mask over chunks of rows (TRAK's is-done mask). Data is
  flushed before its chunk is marked done, so a killed run resumes with only the missing chunks and ends with the
  same numbers.

Layout (kronfluence-style named artefacts)::

    work_dir/manifest.json
    work_dir/<name>.safetensors | <name>.json | <name>.npy
    work_dir/<name>/meta.json, data.npy, done.npy       (a ChunkedArray)

One writer per work directory: there is no locking between processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_TMP_SUFFIX = ".tmp"
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_HINT = "use another --work-dir or --overwrite"


class StoreMismatchError(ValueError):
    """A work directory (or an artefact in it) was built from other inputs or with another shape."""


# ----------------------------------------------------------------------------------------------- atomic writes

def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write_fn(binary_file)`` into a temp file beside it, then ``os.replace`` it into place.

    If ``write_fn`` raises, the temp file is removed and any previous file at ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
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


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _normalise(obj: Any) -> Any:
    """What ``obj`` reads back as from JSON (tuples become lists), so stored and new values compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True))


# ----------------------------------------------------------------------------------------------- work directory

def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of the work directory at ``path`` (inputs and settings), or None if it has none yet."""
    manifest = Path(path) / MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else None


class WorkDir:
    """A folder of named artefacts, bound by its manifest to the inputs that produced them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest: dict | None = None

    def __repr__(self) -> str:
        return f"WorkDir({str(self.path)!r})"

    # -- manifest

    def bind(self, model_fingerprint: str, data_fingerprint: str, settings: dict, overwrite: bool = False) -> None:
        """Tie this folder to its inputs: record them on first use, check them on every later use.

        Raises StoreMismatchError listing every key whose stored value differs from the new one. ``overwrite=True``
        deletes every artefact in the folder and records the new inputs instead.
        """
        new = _normalise({"format": FORMAT_VERSION, "model_fingerprint": model_fingerprint,
                          "data_fingerprint": data_fingerprint, "settings": dict(settings)})
        manifest_path = self.path / MANIFEST
        stray = self._contents()
        if manifest_path.exists():
            if overwrite:
                for entry in stray:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            else:
                differences = _differences(json.loads(manifest_path.read_text()), new)
                if differences:
                    raise StoreMismatchError(f"work directory {self.path} was built from other inputs:\n  "
                                             + "\n  ".join(differences) + f"\n{_HINT}")
                self.manifest = new
                return
        else:
            stray = [p for p in stray if p.name != MANIFEST]
            if stray:  # never adopt (or delete) files whose origin is unknown
                names = ", ".join(sorted(p.name for p in stray)[:5])
                raise StoreMismatchError(f"{self.path} is not empty ({names}) but has no {MANIFEST}: it is not a work "
                                         "directory, or its manifest was lost; use another --work-dir")
        _write_json(manifest_path, new)
        self.manifest = new

    def _contents(self) -> list[Path]:
        """Everything in the folder except the manifest; leftover temp files from killed atomic writes are removed."""
        entries = []
        for entry in self.path.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
            elif entry.name != MANIFEST:
                entries.append(entry)
        return entries

    # -- named artefacts

    def artefact_path(self, name: str, suffix: str = "") -> Path:
        """The path of artefact ``name`` ("fisher", "losses/pre", ...); refuses names that would leave the folder."""
        if self.manifest is None:
            raise RuntimeError(f"{self}: call bind(model_fingerprint, data_fingerprint, settings) before using "
                               "artefacts, so they cannot be mixed with artefacts from other inputs")
        parts = name.split("/")
        if suffix and not name.endswith(suffix):
            name += suffix
        if not all(_NAME_PART.fullmatch(p) for p in parts) or name == MANIFEST:
            raise ValueError(f"bad artefact name {name!r}: use letters, digits, '_', '-', '.', and '/' for folders")
        return self.path / name

    def exists(self, name: str, suffix: str = "") -> bool:
        return self.artefact_path(name, suffix).exists()

    def save_json(self, name: str, obj: Any) -> Path:
        path = self.artefact_path(name, ".json")
        _write_json(path, obj)
        return path

    def load_json(self, name: str) -> Any:
        return json.loads(self.artefact_path(name, ".json").read_text())

    def save_npy(self, name: str, array: np.ndarray) -> Path:
        path = self.artefact_path(name, ".npy")
        _write_npy(path, np.asarray(array))
        return path

    def load_npy(self, name: str) -> np.ndarray:
        return np.load(self.artefact_path(name, ".npy"), allow_pickle=False)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        """Save tensors as ``<name>.safetensors`` with string metadata (safetensors allows only str -> str)."""
        from safetensors.torch import save

        metadata = dict(metadata or {})
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; got {bad!r} (json.dumps the values)")
        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
        path = self.artefact_path(name, ".safetensors")
        atomic_write(path, lambda f: f.write(blob))
        return path

    def load_tensors(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Load ``<name>.safetensors`` -> (tensors on CPU, metadata)."""
        from safetensors import safe_open

        with safe_open(self.artefact_path(name, ".safetensors"), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})

    def chunked(self, name: str, shape: tuple[int, ...], chunk_rows: int) -> "ChunkedArray":
        """Open (creating on first use) the float32 array ``name`` of ``shape``, done-mask over ``chunk_rows`` rows."""
        return ChunkedArray(self.artefact_path(name), tuple(int(s) for s in shape), int(chunk_rows))


def _differences(old: dict, new: dict) -> list[str]:
    """One line per key whose value differs, e.g. "model fingerprint: was a1b2, now c3d4"."""
    lines = []
    for key, label in [("format", "format version"), ("model_fingerprint", "model fingerprint"),
                       ("data_fingerprint", "data fingerprint")]:
        if old.get(key) != new.get(key):
            lines.append(f"{label}: was {old.get(key)!r}, now {new.get(key)!r}")
    old_settings, new_settings = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_settings) | set(new_settings)):
        was = repr(old_settings[key]) if key in old_settings else "(absent)"
        now = repr(new_settings[key]) if key in new_settings else "(absent)"
        if was != now:
            lines.append(f"setting {key!r}: was {was}, now {now}")
    return lines


# ----------------------------------------------------------------------------------------------- chunked arrays

class ChunkedArray:
    """A float32 array of fixed shape, written chunk by chunk of rows, with a done-mask that survives a crash.

    Files in its folder: ``data.npy`` (memmap), ``done.npy`` (uint8 per chunk, rewritten atomically) and
    ``meta.json`` (shape, chunk_rows; written last, so it marks a fully created array).
    """

    def __init__(self, folder: Path, shape: tuple[int, ...], chunk_rows: int):
        """chunk_rows applies to a new array; an existing one keeps the chunking it was created with (a resumed run
        may use other batch settings: chunking changes no number, only which rows are written together)."""
        if not shape or any(s < 0 for s in shape) or chunk_rows < 1:
            raise ValueError(f"chunked array needs sizes >= 0 and chunk_rows >= 1; got {shape}, {chunk_rows}")
        folder = Path(folder)
        if (folder / "meta.json").exists():
            stored = json.loads((folder / "meta.json").read_text())
            if tuple(stored["shape"]) != tuple(shape) or stored.get("dtype") != "float32":
                raise StoreMismatchError(
                    f"chunked array {folder.name!r} in {folder.parent} was created with shape "
                    f"{tuple(stored['shape'])}, but is now opened with shape {shape}; {_HINT}")
            chunk_rows = int(stored["chunk_rows"])
        self.folder, self.shape, self.chunk_rows = folder, shape, chunk_rows
        self.name = self.folder.name
        self.num_chunks = -(-shape[0] // chunk_rows)
        meta = {"shape": list(shape), "chunk_rows": chunk_rows, "dtype": "float32"}
        if not (self.folder / "meta.json").exists():
            self._create(meta)
        self._data = np.load(self.folder / "data.npy", mmap_mode="r+")
        self._done = np.load(self.folder / "done.npy")
        if self._data.shape != shape or self._data.dtype != np.float32 or self._done.shape != (self.num_chunks,):
            raise StoreMismatchError(f"chunked array {self.name!r} in {self.folder.parent} is damaged (data "
                                     f"{self._data.shape} {self._data.dtype}, mask {self._done.shape}); {_HINT}")

    def _create(self, meta: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".data.npy{_TMP_SUFFIX}"
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=self.shape).flush()
        os.replace(tmp, self.folder / "data.npy")
        _write_npy(self.folder / "done.npy", np.zeros(self.num_chunks, np.uint8))
        _write_json(self.folder / "meta.json", meta)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        start = k * self.chunk_rows
        return start, min(start + self.chunk_rows, self.shape[0])

    def pending_chunks(self) -> list[tuple[int, int]]:
        """(start, stop) row ranges of the chunks not yet written, in order."""
        return [self.chunk_bounds(k) for k in range(self.num_chunks) if not self._done[k]]

    @property
    def is_complete(self) -> bool:
        return bool(self._done.all())

    def write_chunk(self, start: int, stop: int, values) -> None:
        """Write rows [start, stop) of one whole chunk, flush them to disk, and only then mark the chunk done."""
        k, rem = divmod(start, self.chunk_rows)
        if rem or not 0 <= k < self.num_chunks or (start, stop) != self.chunk_bounds(k):
            raise ValueError(f"{self.name}: rows [{start}, {stop}) are not one chunk (chunk_rows {self.chunk_rows}, "
                             f"{self.shape[0]} rows)")
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().numpy()
        values = np.asarray(values, dtype=np.float32)
        expected = (stop - start, *self.shape[1:])
        if values.shape != expected:
            raise ValueError(f"{self.name}: chunk [{start}, {stop}) needs shape {expected}, got {values.shape}")
        self._data[start:stop] = values
        self._flush_data()
        self._done[k] = 1
        _write_npy(self.folder / "done.npy", self._done)

    def _flush_data(self) -> None:
        self._data.flush()

    def read(self) -> np.ndarray:
        """The whole array (read-only memmap); refuses while chunks are missing."""
        missing = self.pending_chunks()
        if missing:
            shown = ", ".join(f"[{a}, {b})" for a, b in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise RuntimeError(f"chunked array {self.name!r} is incomplete: {len(missing)} of {self.num_chunks} "
                               f"chunks missing (rows {shown}); rerun the pass to fill them")
        return np.load(self.folder / "data.npy", mmap_mode="r")


def run_chunked(array: ChunkedArray, compute_fn: Callable[[int, int], Any], progress: bool = False) -> np.ndarray:
    """Fill every pending chunk with ``compute_fn(start, stop)``; a killed run resumes with only the missing chunks."""
    pending = array.pending_chunks()
    with tqdm(total=array.num_chunks, initial=array.num_chunks - len(pending), desc=array.name, unit="chunk",
              disable=not progress) as bar:
        for start, stop in pending:
            array.write_chunk(start, stop, compute_fn(start, stop))
            bar.update(1)
    return array.read()
