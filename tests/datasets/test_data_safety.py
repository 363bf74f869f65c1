"""Training-set inputs that must be refused in one line naming the culprit, before a byte outside the data folder is
read: file names that leave the folder, FIFOs and devices, names of no file, decompression bombs, captions and names
that are not valid Unicode, non-bytes parquet images, JSON Python cannot parse, exports into folders of other files."""
import contextlib
import io
import json
import os
import signal
import struct
import sys
import tarfile
import warnings
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unlearn_fast.data import DataError, export_imagefolder, open_dataset
from unlearn_fast.data.content import DigestCache
from unlearn_fast.errors import UserInputError

# --- helpers (test_input_properties.py uses them too) -----------------------------------------------------------------

_opened: list[str] | None = None  # while a list, every path opened in this process is appended to it


def _record_open(event, args):
    # Audit hooks cannot be removed: this one does nothing unless `watching_opens` is active.
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)


@contextlib.contextmanager
def watching_opens():
    """Yields the list of paths opened (by open, os.open, PIL...) inside the block."""
    global _opened
    _opened = seen = []
    try:
        yield seen
    finally:
        _opened = None


def opened_outside(seen: list[str], root: str) -> list[str]:
    """The paths of `seen` whose real path is outside `root` (Python modules imported on the way aside)."""
    real_root = os.path.join(os.path.realpath(root), "")
    return [path for path in seen
            if not os.path.join(os.path.realpath(path), "").startswith(real_root)
            and not path.endswith((".py", ".pyc", ".so"))]


@contextlib.contextmanager
def time_limit(seconds: int):
    """A hang (a FIFO opened for reading, /dev/zero read to its end) becomes a test failure instead of a stuck run."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: blocked on a FIFO or an endless file?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tiny_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A 70-byte PNG whose header claims width × height pixels: a decompression bomb as far as a header tells."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def write_metadata(root, lines) -> str:
    """metadata.jsonl of `lines` (dicts as JSON, strings as they are) in `root`, with a good a.png on line 1."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "a.png"), "wb") as handle:
        handle.write(tiny_png())
    with open(os.path.join(root, "metadata.jsonl"), "w", encoding="utf-8") as handle:
        for line in [{"file_name": "a.png", "text": "fine"}, *lines]:
            handle.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(root)


def use_every_part(dataset) -> None:
    """What prepare and a report do with a set: its content index (through a digest cache), captions, every image."""
    dataset.content_index(DigestCache(None))
    dataset.caption_digests()
    for index in range(len(dataset)):
        dataset.image(index)


def assert_one_line_naming(error: BaseException, *parts: str) -> None:
    message = str(error)
    assert len(message.splitlines()) == 1, message
    message.encode("utf-8")  # printable as it is: no lone surrogate of the input leaks into the message
    for part in parts:
        assert part in message, (part, message)


@pytest.fixture
def outside(tmp_path):
    """A folder beside the data folder holding a valid image that must never be read."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.png").write_bytes(tiny_png(1))
    return folder


# --- file names that leave the folder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "dotdot-through-sub", "absolute", "etc-passwd", "symlink",
                                  "symlinked-folder"])
def test_file_name_leaving_the_folder_is_refused_before_any_byte_is_read(tmp_path, outside, kind):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink(outside, root / "escape_dir")
    file_name = {"dotdot": "../outside/secret.png", "dotdot-through-sub": "sub/../../outside/secret.png",
                 "absolute": str(outside / "secret.png"), "etc-passwd": "/etc/passwd", "symlink": "escape.png",
                 "symlinked-folder": "escape_dir/secret.png"}[kind]
    write_metadata(root, [{"file_name": file_name, "text": "a secret"}])
    with watching_opens() as seen, pytest.raises(DataError) as error:
        use_every_part(open_dataset(str(root)))
    assert_one_line_naming(error.value, "metadata.jsonl line 2")
    assert opened_outside(seen, str(root)) == []


def test_symlinks_that_stay_inside_the_folder_are_read(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "b.png").write_bytes(tiny_png(2))
    os.symlink("images/b.png", root / "alias.png")
    os.symlink("images", root / "alias_dir")
    write_metadata(root, [{"file_name": name, "text": name} for name in ("alias.png", "alias_dir/b.png",
                                                                          "images/../images/b.png")])
    dataset = open_dataset(str(root))
    index = dataset.content_index(DigestCache(None))
    assert len({bytes(row) for row in index["digest"][1:]}) == 1  # the same bytes three ways
    np.testing.assert_array_equal(np.asarray(dataset.image(1)), np.asarray(Image.open(root / "images" / "b.png")))


# --- FIFOs, devices, and names of no file -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "fifo-in-sub-folder", "dev-zero", "symlink-to-dev-zero"])
def test_fifo_or_device_is_refused_without_blocking(tmp_path, kind):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    os.mkfifo(root / "pipe")
    os.mkfifo(root / "sub" / "pipe.png")
    os.symlink("/dev/zero", root / "zero.png")
    file_name = {"fifo": "pipe", "fifo-in-sub-folder": "sub/pipe.png", "dev-zero": "/dev/zero",
                 "symlink-to-dev-zero": "zero.png"}[kind]
    write_metadata(root, [{"file_name": file_name, "text": "endless"}])
    with time_limit(10), pytest.raises(DataError) as error:
        use_every_part(open_dataset(str(root)))
    assert_one_line_naming(error.value, "metadata.jsonl line 2")


def test_a_fifo_swapped_in_after_the_check_cannot_block_the_open(tmp_path):
    from unlearn_fast.data.content import open_regular

    path = tmp_path / "a.png"
    path.write_bytes(tiny_png())
    checked = os.stat(path)
    path.unlink()
    os.mkfifo(path)  # between the stat and the open, as a hostile or careless process could
    with time_limit(10), pytest.raises(DataError, match="not a regular file"):
        open_regular(str(path), "a.png (metadata.jsonl line 1)", DataError, checked)


@pytest.mark.parametrize("file_name", ["", ".", "sub", "sub/", "sub/..", "a\0b.png"],
                         ids=["empty", "dot", "folder", "folder-slash", "dot-dot-to-root", "nul"])
def test_name_of_no_file_is_refused_naming_the_line(tmp_path, file_name):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    write_metadata(root, [{"file_name": file_name, "text": "nothing"}])
    with time_limit(10), pytest.raises(DataError) as error:
        use_every_part(open_dataset(str(root)))
    assert_one_line_naming(error.value, f"{root / 'metadata.jsonl'} line 2")


# --- decompression bombs ----------------------------------------------------------------------------------------------


def _bomb_set(tmp_path, layout: str, data: bytes) -> str:
    if layout == "folder":
        root = write_metadata(tmp_path / "data", [{"file_name": "big.png", "text": "huge"}])
        (tmp_path / "data" / "big.png").write_bytes(data)
        return root
    if layout == "parquet":
        pq.write_table(pa.table({"image": [tiny_png(), data], "text": ["fine", "huge"],
                                 "file_name": ["a.png", "big.png"]}), tmp_path / "t.parquet")
        return str(tmp_path / "t.parquet")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, member in {"a.png": tiny_png(), "a.txt": b"fine", "big.png": data, "big.txt": b"huge"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(member)
            tar.addfile(info, io.BytesIO(member))
    return str(tmp_path / "s.tar")


@pytest.mark.parametrize("layout", ["folder", "parquet", "webdataset"])
@pytest.mark.parametrize("side", [9000, 10000], ids=["above-cap", "pil-warning-range"])
def test_image_above_the_pixel_cap_is_refused_from_its_header(tmp_path, layout, side):
    dataset = open_dataset(_bomb_set(tmp_path, layout, header_only_png(side, side)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape either
        for use in (lambda: dataset.content_index(DigestCache(None)), lambda: dataset.image(1)):
            with pytest.raises(DataError) as error:
                use()
            assert_one_line_naming(error.value, "big.png", f"{side}×{side}")


# --- text that is not valid Unicode, JSON Python cannot parse ---------------------------------------------------------


@pytest.mark.parametrize("line", ['{"file_name": "a.png", "text": "a \\ud800 cat"}',
                                  '{"file_name": "a.png", "text": ["fine", "\\udfff"]}'], ids=["string", "list"])
def test_caption_with_a_lone_surrogate_is_refused_naming_the_line(tmp_path, line):
    root = write_metadata(tmp_path / "data", [line])
    with pytest.raises(DataError, match="caption .* is not valid Unicode") as error:
        use_every_part(open_dataset(root))
    assert_one_line_naming(error.value, "metadata.jsonl line 2")


def test_file_name_with_a_lone_surrogate_is_refused_naming_the_line(tmp_path):
    root = write_metadata(tmp_path / "data", ['{"file_name": "\\udc80.png", "text": "undecodable name"}'])
    with open(os.path.join(os.fsencode(root), b"\x80.png"), "wb") as handle:  # the file exists: only its name is bad
        handle.write(tiny_png())
    with pytest.raises(DataError, match="file_name .* is not valid Unicode") as error:
        use_every_part(open_dataset(root))
    assert_one_line_naming(error.value, "metadata.jsonl line 2")


@pytest.mark.parametrize("members", [{"k.json": b'{"text": "\\ud800"}'}, {"\udc80.txt": b"named in Latin-1"}],
                         ids=["json-caption", "member-name"])
def test_shard_with_text_that_is_not_valid_unicode_is_refused(tmp_path, members):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        image = next(iter(members)).split(".")[0] + ".png"
        for name, member in {image: tiny_png(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(member)
            tar.addfile(info, io.BytesIO(member))
    with pytest.raises(DataError, match="not valid Unicode") as error:
        use_every_part(open_dataset(str(path)))
    assert_one_line_naming(error.value, str(path))


@pytest.mark.parametrize("line", ["[" * 100_000, '{"file_name": "a.png", "text": "x", "n": ' + "7" * 5000 + "}"],
                         ids=["nested-too-deep", "integer-too-long"])
def test_json_python_cannot_parse_is_refused_naming_the_line(tmp_path, line):
    with pytest.raises(DataError, match="not valid JSON") as error:
        open_dataset(write_metadata(tmp_path / "data", [line]))
    assert_one_line_naming(error.value, "metadata.jsonl line 2")


# --- parquet images that are not bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize("images, first_bad", [
    ([7, 8], 1),
    (["a.png", "b.png"], 1),
    ([{"bytes": tiny_png(), "path": None}, {"bytes": None, "path": "b.png"}], 2),
], ids=["integers", "paths", "path-only-struct"])
def test_parquet_image_that_is_not_bytes_is_refused_at_open(tmp_path, images, first_bad):
    pq.write_table(pa.table({"image": images, "text": ["one", "two"]}), tmp_path / "t.parquet")
    with pytest.raises(DataError) as error:
        open_dataset(str(tmp_path / "t.parquet"))
    assert_one_line_naming(error.value, str(tmp_path / "t.parquet"), "column 'image'", f"row {first_bad}:")


# --- export-data into a folder of other files -------------------------------------------------------------------------


def _listing(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


def _small_set(tmp_path, name: str, captions) -> object:
    root = tmp_path / name
    root.mkdir()
    for i, caption in enumerate(captions):
        (root / f"{i}.png").write_bytes(tiny_png(i))
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"file_name": f"{i}.png", "text": c}) + "\n" for i, c in enumerate(captions))
    return open_dataset(str(root))


@pytest.mark.parametrize("kind", ["other-files", "export-of-another-set", "earlier-export-plus-a-file", "a-file"])
def test_export_into_a_folder_of_other_files_is_refused_in_one_line_before_writing(tmp_path, kind):
    dataset = _small_set(tmp_path, "set", ["a cat", "a dog"])
    out = tmp_path / "out"
    if kind == "other-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif kind == "export-of-another-set":
        export_imagefolder(_small_set(tmp_path, "other", ["a cat", "a bird"]), str(out))
    elif kind == "earlier-export-plus-a-file":
        export_imagefolder(dataset, str(out))
        (out / "notes.txt").write_text("mine")
    else:
        out.write_text("a file")
    before = _listing(tmp_path / "out") if out.is_dir() else out.read_bytes()
    with pytest.raises(UserInputError) as error:
        export_imagefolder(dataset, str(out))
    assert_one_line_naming(error.value, str(out))
    assert (_listing(out) if out.is_dir() else out.read_bytes()) == before


def test_export_again_into_an_earlier_export_of_the_same_set_rewrites_it(tmp_path):
    dataset = _small_set(tmp_path, "set", ["a cat", "a dog"])
    out = tmp_path / "out"
    assert export_imagefolder(dataset, str(out)) == 2
    first = _listing(out)
    assert export_imagefolder(dataset, str(out)) == 2
    assert _listing(out) == first


def test_cli_export_data_into_a_folder_of_other_files_is_one_line(tmp_path):
    from unlearn_fast.cli.main import main

    root = write_metadata(tmp_path / "data", [])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        main(["export-data", "--data", root, "--out", str(tmp_path / "out")])
    assert_one_line_naming(exit_.value.code, "export-data", str(tmp_path / "out"), "not empty")
    assert os.listdir(tmp_path / "out") == ["notes.txt"]
