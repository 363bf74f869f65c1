"""store.shared_cache: a JSON object several processes add entries to; none loses another's, and a write that is
interrupted (or a writer killed mid-write) leaves the old file."""
import json
import multiprocessing
import os
import signal

import pytest

from unlearn_fast.store import add_entries, read_entries
from unlearn_fast.store import atomic
from unlearn_fast.store.errors import DamagedArtefactError

FORK = multiprocessing.get_context("fork")  # the children run only file operations: no torch threads involved
KEYS_PER_WRITER = 25
# Only a hung process is given up on, never a slow one: a loaded 2-core machine may take minutes.
HUNG_AFTER_S = 30 * 60


def add_one_at_a_time(path, prefix, start):
    """Add KEYS_PER_WRITER keys, one read-modify-write each, starting with the other writer (the most interleaving)."""
    start.wait(timeout=HUNG_AFTER_S)
    for i in range(KEYS_PER_WRITER):
        add_entries(path, {f"{prefix}{i}": i})


def test_two_processes_adding_different_keys_keep_every_key(tmp_path):
    path = tmp_path / "losses.json"
    add_entries(path, {"before": -1.0})
    start = FORK.Barrier(2)
    writers = [FORK.Process(target=add_one_at_a_time, args=(path, prefix, start)) for prefix in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=HUNG_AFTER_S)
    for writer in writers:
        if writer.is_alive():
            writer.kill()
        assert writer.exitcode == 0
    entries = read_entries(path)
    expected = {"before": -1.0} | {f"{p}{i}": i for p in ("a", "b") for i in range(KEYS_PER_WRITER)}
    assert entries == expected
    assert sorted(os.listdir(tmp_path)) == ["losses.json", "losses.json.sum"]  # no lock or temp file left


def test_entries_added_by_another_process_since_this_one_read_are_kept(tmp_path):
    path = tmp_path / "measure.json"
    add_entries(path, {"q0": 1.0}, checksum=False)
    seen = read_entries(path)  # this process reads, then computes q1 for a while...
    add_entries(path, {"q2": 3.0}, checksum=False)  # ...while another adds q2
    merged = add_entries(path, {"q1": 2.0}, checksum=False)
    assert seen == {"q0": 1.0}
    assert merged == read_entries(path) == {"q0": 1.0, "q2": 3.0, "q1": 2.0}
    assert list(merged) == ["q0", "q2", "q1"]  # in the order they were added, as the file was always laid out
    assert not (tmp_path / "measure.json.sum").exists()


def test_a_value_json_cannot_write_leaves_the_old_file_untouched(tmp_path):
    path = tmp_path / "losses.json"
    add_entries(path, {"q0": 1.0})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        add_entries(path, {"q1": {1, 2}})  # a set: the serialiser raises
    assert path.read_bytes() == before
    assert read_entries(path) == {"q0": 1.0}
    add_entries(path, {"q1": 2.0})  # the lock was released
    assert read_entries(path) == {"q0": 1.0, "q1": 2.0}


def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "losses.json"
    add_entries(path, {"q0": 1.0}, checksum=False)
    before = path.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt  # after the new content is complete in its temp file, before it moves into place

    with monkeypatch.context() as patch:
        patch.setattr(atomic.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            add_entries(path, {"q1": 2.0}, checksum=False)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["losses.json"]


def write_and_hang(path, inside):
    """Add an entry, but stop for good halfway through writing it (a process killed mid-write)."""
    real_write_fn = atomic.atomic_write

    def hanging(target, write_fn, checksum=True):
        def half(handle):
            handle.write(b'{"q0": 1.0, "q1"')
            handle.flush()
            inside.set()
            signal.pause()
        real_write_fn(target, half, checksum)

    atomic.atomic_write = hanging
    add_entries(path, {"q1": 2.0}, checksum=False)


def test_a_writer_killed_mid_write_leaves_the_old_file_and_its_lock_is_taken_over(tmp_path):
    path = tmp_path / "losses.json"
    add_entries(path, {"q0": 1.0}, checksum=False)
    before = path.read_bytes()
    inside = FORK.Event()
    writer = FORK.Process(target=write_and_hang, args=(path, inside))
    writer.start()
    try:
        assert inside.wait(timeout=HUNG_AFTER_S)
        assert (tmp_path / "losses.json.lock").exists()
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # also when a check fails: a hanging child would hang the session
        writer.join(timeout=HUNG_AFTER_S)
    assert path.read_bytes() == before and json.loads(before) == {"q0": 1.0}
    assert add_entries(path, {"q2": 3.0}, checksum=False) == {"q0": 1.0, "q2": 3.0}  # the dead writer's lock


def test_a_file_that_is_not_an_object_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "losses.json"
    assert read_entries(path) == {}
    path.write_text('{"q0": 1.0, "q1')
    with pytest.raises(DamagedArtefactError, match=r"losses\.json is damaged \(not valid JSON.*delete it"):
        read_entries(path)
    path.write_text("[1, 2]")
    with pytest.raises(DamagedArtefactError, match="a JSON list, not an object"):
        add_entries(path, {"q0": 1.0})
