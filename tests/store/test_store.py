"""The work directory: manifest binding, atomic writes, safetensors, chunked arrays with a done-mask, resume."""

import json

import numpy as np
import pytest
import torch

from unlearn_fast.store import Binding, ChunkedArray, StoreMismatchError, WorkDir, atomic_write, run_chunked

SETTINGS = {"num_timesteps": 10, "flip": True, "groups": ["cross_attn_kv"], "alpha": 1e-3}
DEPENDS = {"latents": ("data.images",), "text": ("data.captions", "model.text"), "losses": ("model", "data",
           "settings.num_timesteps")}


def binding(model="a1b2", data="d4e5", settings=SETTINGS, rows=None, **extra) -> Binding:
    inputs = {"model.unet": model, "model.text": "t0", "data.images": data, "data.captions": "c0"}
    rows = {} if rows is None else {"data.images": rows}
    return Binding(inputs=inputs, settings=settings, rows=rows, depends=DEPENDS,
                   describe_row=lambda name, row: f"file{row}.png (metadata.jsonl line {row + 1})", **extra)


@pytest.fixture()
def wd(tmp_path):
    w = WorkDir(tmp_path / "work")
    w.bind(binding())
    return w


def rows(start, stop, shape=(3, 2)):
    """Deterministic values for rows [start, stop): what an uninterrupted pass would compute."""
    size = int(np.prod(shape))
    return (np.arange(start * size, stop * size, dtype=np.float32) * 0.5).reshape(stop - start, *shape)


def digests(n, changed=()):
    table = np.arange(n * 16, dtype=np.uint8).reshape(n, 16)
    for row in changed:
        table[row, 0] ^= 0xFF
    return table


# ----------------------------------------------------------------------------------------------- manifest

def test_bind_writes_manifest_and_accepts_same_inputs(tmp_path):
    w = WorkDir(tmp_path / "work")
    assert w.bind(binding()) == []
    manifest = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert manifest["inputs"]["model.unet"] == "a1b2" and manifest["inputs"]["data.images"] == "d4e5"
    assert manifest["settings"] == SETTINGS
    # a later run with the same inputs (tuples read back as lists) binds without complaint
    WorkDir(tmp_path / "work").bind(binding(settings={**SETTINGS, "groups": ("cross_attn_kv",)}))


@pytest.mark.parametrize("model, data, settings, expected", [
    ("c3d4", "d4e5", SETTINGS, ["model.unet: was 'a1b2', now 'c3d4'"]),
    ("a1b2", "ffff", SETTINGS, ["data.images: was 'd4e5', now 'ffff'"]),
    ("a1b2", "d4e5", {**SETTINGS, "num_timesteps": 20}, ["setting 'num_timesteps': was 10, now 20"]),
    ("a1b2", "d4e5", {**SETTINGS, "seed": 3}, ["setting 'seed': was (absent), now 3"]),
    ("c3d4", "d4e5", {k: v for k, v in SETTINGS.items() if k != "flip"},
     ["model.unet: was 'a1b2', now 'c3d4'", "setting 'flip': was True, now (absent)"]),
])
def test_bind_mismatch_names_each_key_and_both_values(wd, model, data, settings, expected):
    with pytest.raises(StoreMismatchError) as err:
        WorkDir(wd.path).bind(binding(model, data, settings))
    message = str(err.value)
    assert str(wd.path) in message and "--overwrite" in message
    for line in expected:
        assert line in message
    assert len(message.strip().splitlines()) == len(expected) + 2  # header, one line per difference, hint
    # nothing was changed: the original inputs still bind
    WorkDir(wd.path).bind(binding())


def test_a_changed_row_is_named_by_its_file_and_line(tmp_path):
    WorkDir(tmp_path).bind(binding(rows=digests(24)))
    with pytest.raises(StoreMismatchError, match=r"data.images: was 'd4e5', now 'x': 2 of 24 rows differ, the first "
                                                 r"at file5.png \(metadata.jsonl line 6\)"):
        WorkDir(tmp_path).bind(binding(data="x", rows=digests(24, changed=(5, 9))))
    with pytest.raises(StoreMismatchError, match=r"1 of 25 rows differ \(24 rows then, 25 now\), the first at "
                                                 r"file24.png"):
        WorkDir(tmp_path).bind(binding(data="y", rows=digests(25)))


def test_overwrite_deletes_only_what_the_change_invalidates(wd):
    wd.save_json("latents", {"x": 1})
    wd.save_tensors("text", {"w": torch.ones(2)})
    run_chunked(wd.chunked("losses", (4,), 2), lambda a, b: np.ones(b - a))
    wd.save_json("queries/q1/query", {"q": 1})  # not in DEPENDS: depends on everything
    (wd.path / "log.txt").write_text("kept\n")
    before = {p.name: p.stat().st_mtime_ns for p in wd.path.iterdir()}

    # the same inputs with overwrite: nothing is deleted
    assert WorkDir(wd.path).bind(binding(), overwrite=True) == []
    assert {p.name: p.stat().st_mtime_ns for p in wd.path.iterdir()} == before

    # a setting only the losses read: the refusal says what would go, overwrite deletes exactly that
    changed = binding(settings={**SETTINGS, "num_timesteps": 20})
    with pytest.raises(StoreMismatchError, match=r"--overwrite deletes losses/, queries/ and keeps latents.json, "
                                                 r"log.txt, text.safetensors"):
        WorkDir(wd.path).bind(changed)
    assert WorkDir(wd.path).bind(changed, overwrite=True) == ["losses", "queries"]
    after = {p.name: p.stat().st_mtime_ns for p in wd.path.iterdir()}
    assert {k: v for k, v in after.items() if k in ("latents.json", "text.safetensors", "log.txt")} == \
        {k: v for k, v in before.items() if k in ("latents.json", "text.safetensors", "log.txt")}
    assert "losses" not in after and "queries" not in after
    WorkDir(wd.path).bind(changed)  # the new inputs are now the recorded ones
    with pytest.raises(StoreMismatchError, match="was 20, now 10"):
        WorkDir(wd.path).bind(binding())

    # a changed model part invalidates what reads it ("model" covers model.text) and keeps the latents
    assert WorkDir(wd.path).bind(Binding(inputs={**changed.inputs, "model.text": "t1"}, settings=changed.settings,
                                         depends=DEPENDS), overwrite=True) == ["text.safetensors"]
    assert (wd.path / "latents.json").exists()


def test_refuses_a_folder_with_files_but_no_manifest(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(StoreMismatchError, match="no manifest.json"):
            WorkDir(tmp_path).bind(binding(), overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_manifest_of_the_previous_format_is_refused_with_everything_listed(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "model_fingerprint": "a", "data_fingerprint": "b",
                                                         "settings": SETTINGS}))
    (tmp_path / "latents").mkdir()
    with pytest.raises(StoreMismatchError, match=r"(?s)format version: was 1, now 2.*--overwrite deletes latents/\)"):
        WorkDir(tmp_path).bind(binding())


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.json.sum"]  # no temp file left behind


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
    w.bind(binding())
    return w


def test_chunk_not_marked_done_when_data_write_fails(wd, monkeypatch):
    arr = wd.chunked("losses", (6,), 3)

    def broken_fsync(fd):
        raise OSError("I/O error")

    with monkeypatch.context() as patched:  # the part file's write fails before it is renamed into place
        patched.setattr("unlearn_fast.store.atomic.os.fsync", broken_fsync)
        with pytest.raises(OSError, match="I/O error"):
            arr.write_chunk(0, 3, np.ones(3))
    assert arr.pending_chunks() == [(0, 3), (3, 6)]
    assert not list((arr.folder / "parts").iterdir())  # no half-written part is left behind
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


def test_two_writers_fill_one_array_and_a_crashed_consolidation_is_redone(wd):
    """Two handles on one array (as two ranks hold) write disjoint chunks as parts; consolidating gives the array one
    writer would have made, and consolidating again after a crash between its steps changes nothing."""
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    first, second = wd.chunked("losses", (10, 3), 3), wd.chunked("losses", (10, 3), 3)
    for handle, chunks in ((first, [0, 2]), (second, [1, 3])):
        for k in chunks:
            start, stop = handle.chunk_bounds(k)
            handle.write_chunk(start, stop, values[start:stop])
    assert first.pending_chunks() == [] and second.is_complete
    assert first.folder.joinpath("done.npy").exists() and not np.load(first.folder / "done.npy").any()
    before_parts = sorted(p.name for p in (first.folder / "parts").iterdir() if p.suffix == ".npy")
    first.consolidate()
    np.testing.assert_array_equal(first.read(), values)
    assert not list((first.folder / "parts").iterdir())
    # a consolidation killed after marking the chunks done but before deleting the parts: the parts are copied again
    for name in before_parts:
        k = int(name[:-4])
        start, stop = first.chunk_bounds(k)
        np.save(first.folder / "parts" / name, values[start:stop])
    np.testing.assert_array_equal(wd.chunked("losses", (10, 3), 3).read(), values)
