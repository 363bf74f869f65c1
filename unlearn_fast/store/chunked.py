"""Chunked float32 (or float16) arrays with a done-mask (TRAK's is-done mask): long passes write them chunk by chunk
of rows, so a killed run resumes with only the missing chunks and ends with the same numbers.

Each chunk is first written as a file of its own (``parts/<k>.npy``, atomically: its existence is the chunk's done
mark), so several processes (the ranks of a torchrun job) can fill one array at once without ever writing the same
file. One process then consolidates the parts into the array's memmap (``consolidate``), which is what readers map."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import TMP_SUFFIX, write_json, write_npy
from .errors import HINT, StoreMismatchError

DTYPES = ("float32", "float16")  # float16: stored features (half the bytes a query streams); everything else float32


class ChunkedArray:
    """A float32 (or float16: DTYPES) array of fixed shape, written chunk by chunk of rows, with a done-mask that
    survives a crash.

    Files in its folder: ``data.npy`` (memmap), ``done.npy`` (uint8 per consolidated chunk, rewritten atomically),
    ``parts/`` (chunks written but not yet consolidated) and ``meta.json`` (shape, chunk_rows; written last, so it
    marks a fully created array).
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
            stored = json.loads((folder / "meta.json").read_text())
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
        self._data = np.load(self.folder / "data.npy", mmap_mode="r+")
        self._done = np.load(self.folder / "done.npy")
        if self._data.shape != shape or self._data.dtype != self.dtype or self._done.shape != (self.num_chunks,):
            raise StoreMismatchError(f"chunked array {self.name!r} in {self.folder.parent} is damaged (data "
                                     f"{self._data.shape} {self._data.dtype}, mask {self._done.shape}); {HINT}")

    def _create(self, meta: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".data.npy{TMP_SUFFIX}"
        np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=self.shape).flush()
        os.replace(tmp, self.folder / "data.npy")
        write_npy(self.folder / "done.npy", np.zeros(self.num_chunks, np.uint8))
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

    def pending_chunks(self) -> list[tuple[int, int]]:
        """(start, stop) row ranges of the chunks not yet written, in order (as the files say now: another process
        may have written or consolidated chunks since this one opened the array)."""
        self._done = np.load(self.folder / "done.npy")
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
        for k in parts:
            start, stop = self.chunk_bounds(k)
            self._data[start:stop] = np.load(self._part(k))
        self._data.flush()
        self._done[parts] = 1
        write_npy(self.folder / "done.npy", self._done)
        for k in parts:
            self._part(k).unlink()

    def read(self) -> np.ndarray:
        """The whole array (read-only memmap), after consolidating its parts; refuses while chunks are missing."""
        self.consolidate()
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
