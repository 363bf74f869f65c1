"""An inter-process lock on a file: who holds it (host, pid, command), waiting, and taking over a dead owner's lock.

The lock file is made complete in a temp file and hard-linked into place, so it never exists half-written and only one
process can create it (``link`` fails when the name exists). A lock whose owner ran on this host and is gone (its pid
is free, or now belongs to a process started later) is stale: the next process takes it over. A lock held on another
host cannot be checked from here; it is waited for, and the message names the host, pid and file to remove by hand.

One implementation for every lock of the package: the work directory's and each retraining job's.
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class LockTimeout(TimeoutError):
    """The lock stayed held by another live process for longer than the caller would wait."""


_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _process_start(pid: int) -> int | None:
    """The kernel's start time of process `pid` in clock ticks (Linux), so a reused pid is told apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: int | None  # process start time (ticks), where the platform tells it
    since: float         # when the lock was taken (epoch seconds)
    command: str

    @classmethod
    def me(cls) -> "LockOwner":
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()), time.time(),
                   " ".join(shlex.quote(a) for a in sys.argv))

    @classmethod
    def read(cls, path: Path) -> "LockOwner | None":
        """The owner recorded in `path`; None when the file is gone or unreadable (never half-written: see module doc)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["host"]), int(data["pid"]), data.get("started"), float(data.get("since", 0.0)),
                       str(data.get("command", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started, "since": self.since,
                           "command": self.command})

    def is_alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # only that host can tell
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, owned by another user
        return self.started is None or _process_start(self.pid) in (None, self.started)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        command = f", running {self.command[:120]!r}" if self.command else ""
        return f"{self.host} pid {self.pid} (since {since}{command})"


class FileLock:
    """``with FileLock(path):`` holds the lock for the block (re-entrant within one object); ``try_acquire`` never waits.

    on_wait(owner) is called once when the lock is found held by a live owner and the caller is about to wait.
    read_only_ok: in a folder this process cannot write (a read-only mount, another user's folder), the lock is held
    without a file: this process cannot write there either, so it can only read (an attempt to write fails naming the
    file); without it, such a folder is an OSError naming the lock file.
    """

    def __init__(self, path: str | os.PathLike, on_wait: Callable[[LockOwner], None] | None = None,
                 timeout: float | None = None, poll: float = 0.2, read_only_ok: bool = False):
        self.path = Path(path)
        self.on_wait, self.timeout, self.poll = on_wait, timeout, poll
        self.read_only_ok = read_only_ok
        self._depth = 0
        self._without_file = False

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r}, held={self._depth > 0})"

    @property
    def held(self) -> bool:
        return self._depth > 0

    def owner(self) -> LockOwner | None:
        return LockOwner.read(self.path)

    def _link(self, target: Path, owner: LockOwner) -> bool:
        """Create `target` holding `owner`, atomically and only if it does not exist."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{owner.pid}.{time.monotonic_ns()}.lock-tmp")
        try:
            tmp.write_text(owner.to_json(), encoding="utf-8")
        except OSError as error:
            raise OSError(error.errno, f"cannot create the lock ({os.strerror(error.errno)})", str(target)) from None
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_if_stale(self, target: Path) -> bool:
        """Remove `target` if its owner is gone (or it is unreadable); True if it was, or had already gone.

        Only the very file found stale is removed: a lock released meanwhile is never touched (another process may
        link a new one at that name at any moment), and under the breaker the file must still be the same one (same
        inode, same owner) before it is unlinked; a new holder's file can only appear once the stale one is gone."""
        try:
            found = os.stat(target)
        except FileNotFoundError:
            return True  # released meanwhile: the caller tries to link it
        owner = LockOwner.read(target)
        if owner is not None and owner.is_alive():
            return False
        breaker = target.with_name(target.name + ".break")  # one process at a time removes a stale lock
        if not self._link(breaker, LockOwner.me()):
            held_by = LockOwner.read(breaker)
            if held_by is None or not held_by.is_alive():
                breaker.unlink(missing_ok=True)  # a remover that died mid-way
            return False
        try:
            try:
                now = os.stat(target)
            except FileNotFoundError:
                return True
            if (now.st_dev, now.st_ino) == (found.st_dev, found.st_ino) and LockOwner.read(target) == owner:
                target.unlink(missing_ok=True)  # still the stale file, not a new holder's
            return True
        finally:
            breaker.unlink(missing_ok=True)

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; never waits. Re-entrant."""
        if self._depth:
            self._depth += 1
            return True
        for _ in range(3):
            try:
                linked = self._link(self.path, LockOwner.me())
            except OSError as error:
                if not (self.read_only_ok and error.errno in _READ_ONLY and not os.access(self.path.parent, os.W_OK)):
                    raise
                self._depth, self._without_file = 1, True
                return True
            if linked:
                self._depth, self._without_file = 1, False
                return True
            if not self._remove_if_stale(self.path):
                return False
        return False

    def acquire(self) -> "FileLock":
        """Take the lock, waiting while another live process holds it (up to `timeout` seconds, if set)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        told = False
        while not self.try_acquire():
            owner = self.owner()
            if not told and owner is not None and self.on_wait is not None:
                self.on_wait(owner)
                told = True
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"{self.path} is held by {owner.describe() if owner else 'another process'}; "
                                  f"gave up after {self.timeout:g} s")
            time.sleep(self.poll)
        return self

    def release(self) -> None:
        if self._depth == 0:
            raise RuntimeError(f"{self}: released more often than acquired")
        self._depth -= 1
        if self._depth == 0 and not self._without_file:
            self.path.unlink(missing_ok=True)

    def waiting_message(self, owner: LockOwner) -> str:
        """What a waiting command tells the user: who holds the lock and, for a holder this host cannot check, which
        file to remove once no command runs there any more."""
        text = f"{self.path.parent} is in use by {owner.describe()}: waiting for it to finish"
        if owner.host != socket.gethostname():
            text += (f" (a lock taken on another host, which this one cannot check: if no unlearn-fast command runs "
                     f"there any more, remove {self.path})")
        return text

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
