"""Chunked float32 (or float16) arrays with a done-mask (TRAK's is-done mask): long passes write them chunk by chunk
of rows, so a killed run resumes with only the missing chunks and ends with the same numbers.

Each chunk is first written as a file of its own (``parts/<k>.npy``, atomically: its existence is the chunk's done
mark), so several processes (the ranks of a torchrun job) can fill one array at once without ever writing the same
file. One process then consolidates the parts into the array's memmap (``consolidate``), which is what readers map."""
from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import TMP_SUFFIX, write_json, write_npy
from .errors import HINT, DamagedArtefactError, StoreMismatchError
from .integrity import digest_of, read_checked, repair_hint, sum_path

DTYPES = ("float32", "float16")  # float16: stored features (half the bytes a query streams); everything else float32


class ChunkedArray:
    """A float32 (or float16: DTYPES) array of fixed shape, written chunk by chunk of rows, with a done-mask that
    survives a crash.

    Files in its folder: ``data.npy`` (memmap; its size checked on every open, mapped writable only to consolidate),
    ``done.npy`` (uint8 per consolidated chunk, rewritten atomically), ``digests.npy`` (blake2b-128 of each done
    chunk's rows: ``verify``), ``parts/`` (chunks written but not yet consolidated) and ``meta.json`` (shape,
    chunk_rows; written last, so it marks a fully created array).
    """

    def __init__(self, folder: Path, shape: tuple[int, ...], chunk_rows: int, dtype: str = "float32"):
        """chunk_rows applies to a new array; an existing one keeps the chunking it was created with (a resumed run
        may use other batch settings: chunking changes no number, only which rows are written together)."""
        if not shape or any(s < 0 for s in shape) or chunk_rows < 1:
            raise ValueError(f"chunked array needs sizes >= 0 and chunk_rows >= 1; got {shape}, {chunk_rows}")
        if dtype not in DTYPES:
            raise ValueError(f"chunked array dtype must be one of {DTYPES}, got {dtype!r}")
        folder = Path(folder)
        if (folder / "meta.json").exists():
            stored = load_json_checked(folder / "meta.json")
            if tuple(stored["shape"]) != tuple(shape) or stored.get("dtype") != dtype:
                raise StoreMismatchError(
                    f"chunked array {folder.name!r} in {folder.parent} was created with shape "
                    f"{tuple(stored['shape'])} {stored.get('dtype')}, but is now opened with shape {shape} {dtype}; "
                    f"{HINT}")
            chunk_rows = int(stored["chunk_rows"])
        self.folder, self.shape, self.chunk_rows, self.dtype = folder, shape, chunk_rows, np.dtype(dtype)
        self.name = self.folder.name
        self.num_chunks = -(-shape[0] // chunk_rows)
        meta = {"shape": list(shape), "chunk_rows": chunk_rows, "dtype": dtype}
        if not (self.folder / "meta.json").exists():
            self._create(meta)
        self._offset = self._check_data_file()
        self._done = self._load_mask("done.npy", (self.num_chunks,))
        self._digests = self._load_mask("digests.npy", (self.num_chunks, 16), missing_ok=True)

    @property
    def data_path(self) -> Path:
        return self.folder / "data.npy"

    def _damaged(self, what: str) -> DamagedArtefactError:
        return DamagedArtefactError(f"{self.folder} is damaged ({what}); {repair_hint(self.data_path)}")

    def _check_data_file(self) -> int:
        """data.npy's header says this array's shape and dtype and the file holds every byte of it (a truncated
        array must never be zero-filled by a memmap); returns the offset of the data."""
        try:
            with open(self.data_path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(handle)
                offset = handle.tell()
        except FileNotFoundError:
            raise self._damaged("data.npy is missing") from None
        except (ValueError, OSError) as error:
            raise self._damaged(f"data.npy has no valid header: {error}") from None
        if tuple(shape) != self.shape or np.dtype(dtype) != self.dtype or fortran:
            raise self._damaged(f"data.npy holds {tuple(shape)} {np.dtype(dtype)}, its meta.json says {self.shape} "
                                f"{self.dtype}")
        expected = offset + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        size = os.path.getsize(self.data_path)
        if size != expected:
            raise self._damaged(f"data.npy is {size} bytes, {expected} expected")
        return offset

    def _load_mask(self, name: str, shape: tuple[int, ...], missing_ok: bool = False) -> np.ndarray | None:
        path = self.folder / name
        if missing_ok and not path.exists():
            return None  # arrays written before chunk digests existed
        try:
            mask = np.load(io.BytesIO(read_checked(path)), allow_pickle=False)
        except FileNotFoundError:
            raise self._damaged(f"{name} is missing") from None
        except ValueError as error:
            raise self._damaged(f"{name} is not a valid array: {error}") from None
        if mask.shape != shape or mask.dtype != np.uint8:
            raise self._damaged(f"{name} holds {mask.shape} {mask.dtype}, {shape} uint8 expected")
        return mask

    def _create(self, meta: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".data.npy{TMP_SUFFIX}"
        try:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=self.shape).flush()
            reserve(tmp)
        except OSError as error:  # a full disk: name the array, leave no temp file
            tmp.unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror or str(error), str(self.data_path)) from None
        os.replace(tmp, self.data_path)
        write_npy(self.folder / "done.npy", np.zeros(self.num_chunks, np.uint8))
        write_npy(self.folder / "digests.npy", np.zeros((self.num_chunks, 16), np.uint8))
        write_json(self.folder / "meta.json", meta)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        start = k * self.chunk_rows
        return start, min(start + self.chunk_rows, self.shape[0])

    def _part(self, k: int) -> Path:
        return self.folder / "parts" / f"{k:08d}.npy"

    def _parts(self) -> list[int]:
        """Chunks written as parts and not yet consolidated (a part is complete once its name exists)."""
        folder = self.folder / "parts"
        if not folder.is_dir():
            return []
        return sorted(int(p.name[:-4]) for p in folder.iterdir() if p.name.endswith(".npy") and p.name[:-4].isdigit())

    def _read_part(self, k: int) -> np.ndarray | None:
        """Part k's rows, or None (and the part removed, so it is computed again) when its bytes are damaged."""
        path = self._part(k)
        try:
            values = np.load(io.BytesIO(read_checked(path)), allow_pickle=False)
        except (DamagedArtefactError, ValueError):
            values = None
        start, stop = self.chunk_bounds(k)
        if values is None or values.shape != (stop - start, *self.shape[1:]) or values.dtype != self.dtype:
            path.unlink(missing_ok=True)
            sum_path(path).unlink(missing_ok=True)
            return None
        return values

    def pending_chunks(self) -> list[tuple[int, int]]:
        """(start, stop) row ranges of the chunks not yet written, in order (as the files say now: another process
        may have written or consolidated chunks since this one opened the array)."""
        self._done = self._load_mask("done.npy", (self.num_chunks,))
        written = set(self._parts())
        return [self.chunk_bounds(k) for k in range(self.num_chunks) if not self._done[k] and k not in written]

    @property
    def is_complete(self) -> bool:
        return not self.pending_chunks()

    def write_chunk(self, start: int, stop: int, values) -> None:
        """Write rows [start, stop) of one whole chunk as its part file (complete or absent, never half-written)."""
        k, rem = divmod(start, self.chunk_rows)
        if rem or not 0 <= k < self.num_chunks or (start, stop) != self.chunk_bounds(k):
            raise ValueError(f"{self.name}: rows [{start}, {stop}) are not one chunk (chunk_rows {self.chunk_rows}, "
                             f"{self.shape[0]} rows)")
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().numpy()
        values = np.asarray(values, dtype=self.dtype)  # float16: rounded once, here
        expected = (stop - start, *self.shape[1:])
        if values.shape != expected:
            raise ValueError(f"{self.name}: chunk [{start}, {stop}) needs shape {expected}, got {values.shape}")
        self._write_part(k, values)

    def _write_part(self, k: int, values: np.ndarray) -> None:
        write_npy(self._part(k), values)

    def consolidate(self) -> None:
        """Copy every part into the memmap, flush it, mark those chunks done, then delete the parts. Run by one process
        at a time (a single run, or rank 0 after a barrier); a crash at any point leaves parts to copy again."""
        parts = self._parts()
        if not parts:
            return
        reserve(self.data_path)  # blocks on disk before the memmap writes: a full disk is an OSError, not SIGBUS
        data = np.memmap(self.data_path, self.dtype, "r+", self._offset, self.shape)
        digests = self._digests if self._digests is not None else np.zeros((self.num_chunks, 16), np.uint8)
        done = []
        for k in parts:
            values = self._read_part(k)
            if values is None:
                continue
            start, stop = self.chunk_bounds(k)
            data[start:stop] = values
            digests[k] = np.frombuffer(bytes.fromhex(chunk_digest(values)), np.uint8)
            done.append(k)
        data.flush()
        del data
        self._done[done] = 1
        self._digests = digests
        write_npy(self.folder / "digests.npy", digests)  # before done.npy: a done chunk always has its digest
        write_npy(self.folder / "done.npy", self._done)
        for k in done:
            self._part(k).unlink()
            sum_path(self._part(k)).unlink(missing_ok=True)

    def read(self) -> np.ndarray:
        """The whole array (read-only memmap), after consolidating its parts; refuses while chunks are missing."""
        self.consolidate()
        missing = self.pending_chunks()
        if missing:
            shown = ", ".join(f"[{a}, {b})" for a, b in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise RuntimeError(f"chunked array {self.name!r} is incomplete: {len(missing)} of {self.num_chunks} "
                               f"chunks missing (rows {shown}); rerun the pass to fill them")
        return np.memmap(self.data_path, self.dtype, "r", self._offset, self.shape)

    def verify(self) -> list[int]:
        """The done chunks whose rows no longer match the digest written with them (read chunk by chunk)."""
        if self._digests is None:
            return []
        data = np.memmap(self.data_path, self.dtype, "r", self._offset, self.shape)
        bad = []
        for k in np.flatnonzero(self._done):
            start, stop = self.chunk_bounds(int(k))
            if chunk_digest(np.asarray(data[start:stop])) != bytes(self._digests[k]).hex():
                bad.append(int(k))
        return bad

    def forget(self, chunks: list[int]) -> None:
        """Mark chunks not done, so the next pass computes them again (verify --repair)."""
        self._done[chunks] = 0
        write_npy(self.folder / "done.npy", self._done)


def chunk_digest(values: np.ndarray) -> str:
    return digest_of(np.ascontiguousarray(values).tobytes())


def load_json_checked(path: Path):
    """A JSON artefact, checked against its sum; unreadable JSON is a DamagedArtefactError naming the file."""
    try:
        return json.loads(read_checked(path))
    except ValueError as error:
        raise DamagedArtefactError(f"{path} is damaged (not valid JSON: {error}); {repair_hint(path)}") from None


def reserve(path: Path) -> None:
    """Allocate every block of `path` now (a sparse file written through a memmap on a full disk gets SIGBUS)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise OSError(error.errno, os.strerror(error.errno), str(path)) from None
    finally:
        os.close(fd)


def run_chunked(array: ChunkedArray, compute_fn: Callable[[int, int], Any], progress: bool = False) -> np.ndarray:
    """Fill every pending chunk with ``compute_fn(start, stop)``; a killed run resumes with only the missing chunks."""
    pending = array.pending_chunks()
    with tqdm(total=array.num_chunks, initial=array.num_chunks - len(pending), desc=array.name, unit="chunk",
              disable=not progress) as bar:
        for start, stop in pending:
            array.write_chunk(start, stop, compute_fn(start, stop))
            bar.update(1)
    return array.read()
