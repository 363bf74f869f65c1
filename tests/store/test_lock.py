"""store.FileLock: one holder at a time across processes, waiting, and a dead (or pid-reused) owner's lock taken over."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from unlearn_fast.store import FileLock, LockOwner, LockTimeout

HOLD = textwrap.dedent("""
    import sys, time
    from unlearn_fast.store import FileLock
    lock = FileLock(sys.argv[1])
    assert lock.try_acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
""")


def hold_in_another_process(path, seconds):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def write_owner(path, pid, started=None):
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": started, "since": 0,
                                "command": "old"}))


def test_a_live_holder_is_respected_and_waited_for(tmp_path):
    path = tmp_path / "work.lock"
    holder = hold_in_another_process(path, 1.5)
    owner = FileLock(path).owner()
    assert owner.pid == holder.pid and owner.host == socket.gethostname() and owner.is_alive()
    assert not FileLock(path).try_acquire()
    with pytest.raises(LockTimeout, match=rf"held by {socket.gethostname()} pid {holder.pid}"):
        FileLock(path, timeout=0.3).acquire()
    told = []
    started = time.monotonic()
    with FileLock(path, on_wait=told.append):  # waits for the holder to finish
        assert time.monotonic() - started > 0.5 and [o.pid for o in told] == [holder.pid]
        assert FileLock(path).owner().pid == os.getpid()
    holder.wait()
    assert not path.exists()


def test_a_dead_owners_lock_is_taken_over(tmp_path):
    path = tmp_path / "work.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_owner(path, dead.pid)
    assert not LockOwner.read(path).is_alive()
    lock = FileLock(path)
    assert lock.try_acquire() and lock.owner().pid == os.getpid()
    lock.release()


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path):
    """The lock names this live process's pid but another start time: its owner is gone, the pid was reused."""
    from unlearn_fast.store.lock import _process_start

    if _process_start(os.getpid()) is None:
        pytest.skip("no /proc: process start times unknown here")
    path = tmp_path / "work.lock"
    write_owner(path, os.getpid(), started=_process_start(os.getpid()) - 1)
    assert FileLock(path).try_acquire()


def test_re_entrant_within_one_object_and_released_once(tmp_path):
    path = tmp_path / "work.lock"
    lock = FileLock(path)
    with lock:
        with lock:
            assert path.exists()
        assert path.exists() and lock.held
    assert not path.exists() and not lock.held
    with pytest.raises(RuntimeError, match="released more often"):
        lock.release()


def test_many_processes_never_hold_it_together(tmp_path):
    """Each of 4 processes increments a counter 25 times inside the lock, reading then writing with a pause between:
    any overlap would lose an increment."""
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    script = textwrap.dedent(f"""
        import time
        from unlearn_fast.store import FileLock
        for _ in range(25):
            with FileLock({str(tmp_path / 'c.lock')!r}, poll=0.001):
                value = int(open({str(counter)!r}).read())
                time.sleep(0.001)
                open({str(counter)!r}, "w").write(str(value + 1))
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    assert [w.wait() for w in workers] == [0] * 4
    assert counter.read_text() == "100"


def test_a_lock_released_while_another_process_checks_it_is_never_taken_from_its_next_holder(tmp_path, monkeypatch):
    """The race the many-processes test once hit: a waiter finds the lock file gone (just released), and a third
    process links a new one before the waiter acts. The waiter must not remove that live lock (it used to unlink
    whatever was at the name when its owner read as None), and an unreadable (stale) lock replaced by a live one
    meanwhile is not removed either."""
    from unlearn_fast.store.lock import LockOwner

    path = tmp_path / "c.lock"
    waiter, holder = FileLock(path), FileLock(path)
    real_read = LockOwner.read.__func__
    reads = []

    def read_then_another_process_links(cls, target):
        owner = real_read(cls, target)
        reads.append(owner)
        if len(reads) == 2 and not holder.held:
            holder.try_acquire()  # between this read and whatever the waiter does next
        return owner
    monkeypatch.setattr(LockOwner, "read", classmethod(read_then_another_process_links))
    waiter._remove_if_stale(path)
    monkeypatch.setattr(LockOwner, "read", classmethod(real_read))
    if not holder.held:  # a waiter that never reads an absent lock: the third process links it only now
        assert holder.try_acquire()
    assert path.exists() and not waiter._remove_if_stale(path) and not waiter.try_acquire() and path.exists()
    holder.release()

    path.write_text("not json")  # a stale, unreadable lock (a crash mid-way of an older version)
    real_stat = os.stat
    stats = []

    def stat_then_replaced(target, *args, **kwargs):
        stats.extend([target] if str(target) == str(path) else [])
        if len(stats) == 2 and str(target) == str(path):  # under the breaker: someone already broke it and took it
            os.unlink(path)
            holder.try_acquire()
        return real_stat(target, *args, **kwargs)
    monkeypatch.setattr(os, "stat", stat_then_replaced)
    assert waiter._remove_if_stale(path)
    monkeypatch.setattr(os, "stat", real_stat)
    assert holder.held and LockOwner.read(path) is not None and not waiter.try_acquire()
    holder.release()
    path.write_text("not json")
    assert waiter._remove_if_stale(path) and not path.exists()  # alone, the unreadable lock is broken
