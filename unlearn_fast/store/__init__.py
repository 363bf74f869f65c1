"""The work directory and its parts: atomic writes, chunked arrays with a done-mask, the lock, the content binding."""
from .atomic import atomic_write, write_json, write_npy, write_text
from .chunked import ChunkedArray, run_chunked
from .errors import StoreMismatchError
from .lock import FileLock, LockOwner, LockTimeout
from .shared_cache import add_entries, read_entries
from .workdir import MANIFEST, Binding, WorkDir, read_manifest, recorded_sources

__all__ = ["MANIFEST", "Binding", "ChunkedArray", "FileLock", "LockOwner", "LockTimeout", "StoreMismatchError",
           "WorkDir", "add_entries", "atomic_write", "read_entries", "read_manifest", "recorded_sources", "run_chunked",
           "write_json", "write_npy", "write_text"]
