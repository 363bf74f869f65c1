"""The work directory: manifest binding, atomic writes, safetensors, chunked arrays with a done-mask, resume."""

import json

import numpy as np
import pytest
import torch

from unlearn_fast.store import ChunkedArray, StoreMismatchError, WorkDir, atomic_write, run_chunked

SETTINGS = {"num_timesteps": 10, "flip": True, "groups": ["cross_attn_kv"], "alpha": 1e-3}


@pytest.fixture()
def wd(tmp_path):
    w = WorkDir(tmp_path / "work")
    w.bind("a1b2", "d4e5", SETTINGS)
    return w


def rows(start, stop, shape=(3, 2)):
    """Deterministic values for rows [start, stop): what an uninterrupted pass would compute."""
    size = int(np.prod(shape))
    return (np.arange(start * size, stop * size, dtype=np.float32) * 0.5).reshape(stop - start, *shape)


# ----------------------------------------------------------------------------------------------- manifest

def test_bind_writes_manifest_and_accepts_same_inputs(tmp_path):
    w = WorkDir(tmp_path / "work")
    w.bind("a1b2", "d4e5", SETTINGS)
    manifest = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == "a1b2" and manifest["data_fingerprint"] == "d4e5"
    assert manifest["settings"] == SETTINGS
    # a later run with the same inputs (tuples read back as lists) binds without complaint
    WorkDir(tmp_path / "work").bind("a1b2", "d4e5", {**SETTINGS, "groups": ("cross_attn_kv",)})


@pytest.mark.parametrize("model, data, settings, expected", [
    ("c3d4", "d4e5", SETTINGS, ["model fingerprint: was 'a1b2', now 'c3d4'"]),
    ("a1b2", "ffff", SETTINGS, ["data fingerprint: was 'd4e5', now 'ffff'"]),
    ("a1b2", "d4e5", {**SETTINGS, "num_timesteps": 20}, ["setting 'num_timesteps': was 10, now 20"]),
    ("a1b2", "d4e5", {**SETTINGS, "seed": 3}, ["setting 'seed': was (absent), now 3"]),
    ("c3d4", "d4e5", {k: v for k, v in SETTINGS.items() if k != "flip"},
     ["model fingerprint: was 'a1b2', now 'c3d4'", "setting 'flip': was True, now (absent)"]),
])
def test_bind_mismatch_names_each_key_and_both_values(wd, model, data, settings, expected):
    with pytest.raises(StoreMismatchError) as err:
        WorkDir(wd.path).bind(model, data, settings)
    message = str(err.value)
    assert str(wd.path) in message and "--overwrite" in message
    for line in expected:
        assert line in message
    assert len(message.strip().splitlines()) == len(expected) + 2  # header, one line per difference, hint
    # nothing was changed: the original inputs still bind
    WorkDir(wd.path).bind("a1b2", "d4e5", SETTINGS)


def test_overwrite_clears_artefacts_and_rebinds(wd):
    wd.save_json("summary", {"x": 1})
    wd.save_tensors("fisher", {"w": torch.ones(2)})
    run_chunked(wd.chunked("losses", (4,), 2), lambda a, b: np.ones(b - a))
    w2 = WorkDir(wd.path)
    w2.bind("c3d4", "d4e5", SETTINGS, overwrite=True)
    assert sorted(p.name for p in wd.path.iterdir()) == ["manifest.json"]
    assert not w2.exists("summary", ".json")
    WorkDir(wd.path).bind("c3d4", "d4e5", SETTINGS)  # the new inputs are now the recorded ones
    with pytest.raises(StoreMismatchError, match="was 'c3d4', now 'a1b2'"):
        WorkDir(wd.path).bind("a1b2", "d4e5", SETTINGS)


def test_refuses_a_folder_with_files_but_no_manifest(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(StoreMismatchError, match="no manifest.json"):
            WorkDir(tmp_path).bind("a1b2", "d4e5", SETTINGS, overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_artefacts_need_bind_and_safe_names(tmp_path, wd):
    with pytest.raises(RuntimeError, match="bind"):
        WorkDir(tmp_path / "unbound").save_json("x", {})
    for bad in ["../escape", "/abs", "a/../b", ".hidden", "manifest", ""]:
        with pytest.raises(ValueError, match="bad artefact name"):
            wd.save_json(bad, {})
    wd.save_json("losses/meta", {"ok": True})
    assert wd.load_json("losses/meta") == {"ok": True}


# ----------------------------------------------------------------------------------------------- atomic writes

def test_atomic_write_keeps_old_file_when_write_fn_raises(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"new, half written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temp file left behind


def test_json_and_npy_round_trip(wd):
    wd.save_json("summary", {"top": [3, 1]})
    wd.save_npy("ids", np.arange(5))
    assert wd.load_json("summary") == {"top": [3, 1]}
    np.testing.assert_array_equal(wd.load_npy("ids"), np.arange(5))


def test_safetensors_round_trip_keeps_metadata(wd):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6).reshape(2, 3).t()}  # b is non-contiguous
    meta = {"model": "a1b2", "settings": json.dumps({"samples": 4})}
    path = wd.save_tensors("fisher", tensors, meta)
    assert path.name == "fisher.safetensors"
    loaded, loaded_meta = wd.load_tensors("fisher")
    assert loaded_meta == meta
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k])
    with pytest.raises(TypeError, match="str to str"):
        wd.save_tensors("bad", tensors, {"n": 4})


# ----------------------------------------------------------------------------------------------- chunked arrays

def test_chunked_array_full_run(wd):
    arr = wd.chunked("scores", (10, 3, 2), chunk_rows=4)
    assert arr.pending_chunks() == [(0, 4), (4, 8), (8, 10)]
    assert not arr.is_complete
    out = run_chunked(arr, rows)
    assert arr.is_complete and arr.pending_chunks() == []
    assert out.dtype == np.float32 and out.shape == (10, 3, 2)
    np.testing.assert_array_equal(out, rows(0, 10))


@pytest.mark.parametrize("fail_at", [0, 1, 3])
def test_resume_after_fault_recomputes_only_missing_chunks(tmp_path, fail_at):
    reference = run_chunked(_bound(tmp_path / "ref").chunked("scores", (9, 3, 2), 2), rows)

    calls = []

    def faulty(start, stop):
        if start == fail_at * 2:
            raise KeyboardInterrupt("killed")
        calls.append((start, stop))
        return rows(start, stop)

    with pytest.raises(KeyboardInterrupt):
        run_chunked(_bound(tmp_path / "w").chunked("scores", (9, 3, 2), 2), faulty)
    assert calls == [(2 * k, 2 * k + 2) for k in range(fail_at)]

    # a new process: reopen from disk, resume
    arr = _bound(tmp_path / "w").chunked("scores", (9, 3, 2), 2)
    expected_pending = [(s, min(s + 2, 9)) for s in range(2 * fail_at, 9, 2)]
    assert arr.pending_chunks() == expected_pending
    resumed = []
    out = run_chunked(arr, lambda a, b: resumed.append((a, b)) or rows(a, b))
    assert resumed == expected_pending
    np.testing.assert_array_equal(out, reference)


def _bound(path):
    w = WorkDir(path)
    w.bind("a1b2", "d4e5", SETTINGS)
    return w


def test_chunk_not_marked_done_when_data_write_fails(wd, monkeypatch):
    arr = wd.chunked("losses", (6,), 3)

    def broken_flush():
        raise OSError("I/O error")

    monkeypatch.setattr(arr, "_flush_data", broken_flush)
    with pytest.raises(OSError, match="I/O error"):
        arr.write_chunk(0, 3, np.ones(3))
    assert arr.pending_chunks() == [(0, 3), (3, 6)]
    assert wd.chunked("losses", (6,), 3).pending_chunks() == [(0, 3), (3, 6)]  # also on disk

    with pytest.raises(ValueError, match="shape"):
        arr.write_chunk(3, 6, np.ones(2))  # wrong shape: nothing written, nothing marked
    with pytest.raises(ValueError, match="not one chunk"):
        arr.write_chunk(1, 4, np.ones(3))
    assert arr.pending_chunks() == [(0, 3), (3, 6)]


def test_reopen_with_other_shape_raises_and_other_chunking_keeps_the_stored_one(wd):
    wd.chunked("losses", (10, 4), 5)
    for shape in [(12, 4), (10, 3)]:
        with pytest.raises(StoreMismatchError) as err:
            wd.chunked("losses", shape, 5)
        message = str(err.value)
        assert "created with shape (10, 4)" in message and f"now opened with shape {shape}" in message
    reopened = wd.chunked("losses", (10, 4), 2)
    assert reopened.chunk_rows == 5 and reopened.pending_chunks() == [(0, 5), (5, 10)]


def test_read_incomplete_names_missing_chunks(wd):
    arr = wd.chunked("losses", (10,), 3)
    arr.write_chunk(3, 6, np.arange(3))
    with pytest.raises(RuntimeError) as err:
        arr.read()
    message = str(err.value)
    assert "3 of 4 chunks missing" in message
    assert "[0, 3), [6, 9), [9, 10)" in message
    assert "[3, 6)" not in message


def test_chunked_accepts_torch_values_and_empty_arrays(wd):
    arr = wd.chunked("t", (4, 2), 4)
    arr.write_chunk(0, 4, torch.arange(8, dtype=torch.float64).reshape(4, 2))
    np.testing.assert_array_equal(arr.read(), np.arange(8, dtype=np.float32).reshape(4, 2))
    empty = wd.chunked("empty", (0, 3), 2)
    assert empty.is_complete and empty.read().shape == (0, 3)
    assert isinstance(empty, ChunkedArray)
