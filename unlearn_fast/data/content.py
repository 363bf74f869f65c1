"""What a training set's images ARE, not what they are called: a digest of every image's bytes, plus its size and
colour mode read from its header, so a work directory is bound to content and preprocessing is stated before any work.

Every image passes through ``open_image``: its header must parse and state at most ``MAX_IMAGE_PIXELS`` pixels before
any pixel is decoded, so a small file claiming a huge size (a decompression bomb) is refused, naming it and its size.
Files named by a training set are opened with ``open_regular``: regular files only, checked on the open descriptor.

Reading every byte of millions of images on every run would cost more than the run, so digests are cached per file
by (size, mtime, ctime, inode) in a small SQLite database: a rerun costs one ``stat`` per file. An overwritten file
always changes ctime (no tool can set it back), so a changed pixel is never missed. Location: ``$UNLEARN_FAST_CACHE``
(a folder; ``off`` disables the cache), else ``$XDG_CACHE_HOME/unlearn_fast``, else ``~/.cache/unlearn_fast``.
"""
from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import stat as stat_module
import sys
import warnings
from typing import BinaryIO, Callable, Iterable

import numpy as np
from PIL import Image

# One row per image: blake2b-128 of its encoded bytes, its size and colour mode as the file states them.
INFO = np.dtype([("digest", "u1", (16,)), ("width", "<i4"), ("height", "<i4"), ("mode", "S8")])
_BLOCK = 1 << 20

# The most pixels (width × height, as the header states them) an image may have: 64 megapixels, e.g. 8000 × 8000, is
# far above any diffusion model's input yet decodes to under 200 MB of RGB. Refused above it before decoding, so a
# kilobyte file that claims 100 000 × 100 000 pixels cannot exhaust memory. Lower than PIL's own limit
# (PIL.Image.MAX_IMAGE_PIXELS, about 89 megapixels), so PIL's decompression-bomb warning never fires for an image we
# accept; change this constant, not PIL's, to admit larger images.
MAX_IMAGE_PIXELS = 64_000_000


def empty_index(n: int = 0) -> np.ndarray:
    return np.zeros(n, INFO)


def _info(digest: bytes, header: Image.Image) -> np.ndarray:
    row = empty_index(1)
    row["digest"][0] = np.frombuffer(digest, np.uint8)
    row["width"], row["height"] = header.size
    row["mode"] = header.mode.encode()
    return row


def guarded(action: Callable, where: str, error: Callable[[str], Exception], what: str):
    """action() (a PIL call), any failure raised as `error` naming `where`: PIL raises many types for non-image or
    truncated data, and DecompressionBombError beyond twice its own limit. Its warning below that is silenced:
    open_image refuses those sizes anyway, and a warning (an exception under -W error) names no file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return action()
    except Image.DecompressionBombError as bomb:
        raise error(f"{where}: image too large to decode safely ({bomb})") from None
    except Exception as failure:  # its message on one line, as every message of this package
        raise error(f"{where}: {what} ({type(failure).__name__}: {' '.join(str(failure).split())})") from None


def open_image(source: BinaryIO, where: str, error: Callable[[str], Exception],
               what: str = "cannot read as an image") -> Image.Image:
    """The image in `source`, its header parsed (no pixel decoded) and its size checked against MAX_IMAGE_PIXELS."""
    image = guarded(lambda: Image.open(source), where, error, what)
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise error(f"{where}: image is {width}×{height} ({width * height:,} pixels), above the limit of "
                    f"{MAX_IMAGE_PIXELS:,} (unlearn_fast.data.content.MAX_IMAGE_PIXELS, a decompression-bomb guard)")
    return image


def probe_bytes(data: bytes, where: str, error: Callable[[str], Exception]) -> np.ndarray:
    """The INFO row of an encoded image held in memory (its header is parsed, its pixels are not decoded)."""
    digest = hashlib.blake2b(data, digest_size=16).digest()
    with open_image(io.BytesIO(data), where, error) as header:
        return _info(digest, header)


def probe_file(handle: BinaryIO, where: str, error: Callable[[str], Exception]) -> np.ndarray:
    """The INFO row of an image file open in `handle` (see open_regular): its bytes streamed through the digest, then
    its header."""
    digest = hashlib.blake2b(digest_size=16)
    for block in iter(lambda: handle.read(_BLOCK), b""):
        digest.update(block)
    handle.seek(0)
    with open_image(handle, where, error) as header:
        return _info(digest.digest(), header)


def open_regular(path: str, where: str, error: Callable[[str], Exception],
                 checked: os.stat_result | None = None) -> BinaryIO:
    """`path` open for binary reading, refused (naming `where`) unless it is a regular file and, given `checked`, the
    very file that stat was taken of. O_NONBLOCK: a FIFO put in its place after the check is opened without waiting
    for a writer, then refused by fstat on the open descriptor; no byte is read from anything but a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{where}: file missing") from None
    except OSError as failure:
        raise error(f"{where}: cannot open ({failure.strerror})") from None
    opened = os.fstat(descriptor)
    if not stat_module.S_ISREG(opened.st_mode):
        os.close(descriptor)
        raise error(f"{where}: not a regular file")
    if checked is not None and (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
        os.close(descriptor)
        raise error(f"{where}: file replaced while being read")
    return os.fdopen(descriptor, "rb")


def stat_key(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def default_cache_folder() -> str | None:
    spec = os.environ.get("UNLEARN_FAST_CACHE")
    if spec:
        return None if spec.lower() in ("off", "0", "none") else spec
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "unlearn_fast")


class DigestCache:
    """INFO rows per file path, valid while the file's stat key is unchanged. Never required: if the database cannot be
    opened or written, the cache turns itself off with one notice and digests are computed afresh."""

    def __init__(self, folder: str | None = "default"):
        self.folder = default_cache_folder() if folder == "default" else folder
        self._db: sqlite3.Connection | None = None
        self._known: dict[str, tuple[str, bytes]] = {}
        self._pending: list[tuple[str, str, bytes]] = []
        self.hits = self.misses = 0

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self.folder is not None:
            try:
                os.makedirs(self.folder, exist_ok=True)
                self._db = sqlite3.connect(os.path.join(self.folder, "content_digests.sqlite"), timeout=60)
                self._db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stat TEXT, info BLOB)")
            except (sqlite3.Error, OSError) as error:
                self._disable(error)
        return self._db

    def _disable(self, error: Exception) -> None:
        print(f"[unlearn-fast] digest cache in {self.folder} is off ({error}): image digests are computed afresh",
              file=sys.stderr)
        self.folder, self._db = None, None

    def prefetch(self, folder: str) -> None:
        """Load every entry under `folder` in one query (a rerun over 100 k files then costs no query per file)."""
        db = self._connect()
        if db is None:
            return
        prefix = os.path.join(os.path.abspath(folder), "")
        try:
            rows = db.execute("SELECT path, stat, info FROM digests WHERE path >= ? AND path < ?",
                              (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).fetchall()
        except sqlite3.Error as error:
            self._disable(error)
            return
        self._known.update({path: (stat, info) for path, stat, info in rows})

    def get(self, path: str, key: str) -> bytes | None:
        """The INFO rows (as bytes) cached for absolute `path` if its stat key is still `key`."""
        entry = self._known.get(path)
        if entry is None and self._connect() is not None:
            try:
                found = self._db.execute("SELECT stat, info FROM digests WHERE path = ?", (path,)).fetchone()
            except sqlite3.Error as error:
                self._disable(error)
                found = None
            entry = tuple(found) if found else None
        if entry is not None and entry[0] == key:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, path: str, key: str, blob: bytes) -> None:
        """Cache the INFO rows `blob` for absolute `path` at stat key `key`."""
        self._known[path] = (key, blob)
        if self.folder is not None:
            self._pending.append((path, key, blob))
            if len(self._pending) >= 10_000:
                self.flush()

    def flush(self) -> None:
        if not self._pending or self._connect() is None:
            self._pending.clear()
            return
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", self._pending)
        except sqlite3.Error as error:
            self._disable(error)
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None


def cached_file_rows(cache: DigestCache, path: str, compute: Callable[[], np.ndarray],
                     stat: os.stat_result | None = None) -> bytes:
    """The INFO rows of one file (an image, a parquet file, a shard) as bytes (np.frombuffer(..., INFO) reads them),
    from the cache while the file is unchanged. `path` must be absolute (callers over many files make it so once);
    `stat`: the file's, if already taken."""
    key = stat_key(stat or os.stat(path))
    blob = cache.get(path, key)
    if blob is None:
        blob = np.ascontiguousarray(compute(), INFO).tobytes()
        cache.put(path, key, blob)
    return blob


def rows_of(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, INFO).copy()


def digest_rows(items: Iterable[bytes]) -> np.ndarray:
    """(N, 16) uint8: one blake2b-128 digest per item."""
    return np.array([np.frombuffer(hashlib.blake2b(item, digest_size=16).digest(), np.uint8) for item in items],
                    np.uint8).reshape(-1, 16)


def fingerprint_of(rows: np.ndarray) -> str:
    """A short hash of a (N, k) digest table, row order included."""
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()[:16]


DATA_INPUTS = ("data.images", "data.captions")  # a training set's inputs, as a work directory binds them


def data_fingerprints(image_digests: np.ndarray, caption_digests: np.ndarray) -> dict[str, str]:
    """{DATA_INPUTS name: fingerprint}: what a work directory binds and an attribution records of its training set."""
    return dict(zip(DATA_INPUTS, (fingerprint_of(image_digests), fingerprint_of(caption_digests))))
