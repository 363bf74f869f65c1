"""Property: whatever metadata.jsonl holds — any JSON or none, any caption, any file name (climbing out with '..',
absolute, NUL, '.', a folder, a FIFO, a device, a symlink out of the folder or in a loop, a decompression bomb) —
opening the image folder, indexing its content and decoding its images either works or raises a UserInputError in one
line, and no file outside the folder is ever opened."""
import json
import os
import tempfile
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from test_data_safety import (assert_one_line_naming, header_only_png, opened_outside, time_limit, tiny_png,
                              watching_opens)
from unlearn_fast.data import open_dataset
from unlearn_fast.data.content import DigestCache
from unlearn_fast.errors import UserInputError

# What each example's folder holds (besides metadata.jsonl), and the outside file it must never read.
FOLDER_NAMES = ["good.png", "sub/in.png", "sub", "empty", "pipe", "bad.png", "bomb.png", "big.png", "link_in.png",
                "link_out.png", "link_dir/secret.png", "link_zero", "loop", "missing.png", "sub/../good.png",
                "./good.png", "sub/", "metadata.jsonl"]
HOSTILE_NAMES = ["", ".", "..", "../outside/secret.png", "sub/../../outside/secret.png", "{outside}/secret.png",
                 "/dev/zero", "/etc/passwd", "good.png\0", "\0", "\ud800.png", "\udc80.png", "good.png/x",
                 "new\nline.png", "\x85\u2028.png"]

# Characters of captions and random names: path separators, dots, NUL and controls, lone surrogates, any letter.
CHARACTERS = st.one_of(st.sampled_from(["/", ".", "\0", "\n", "\t", "\x1f", "\ud800", "\udfff", "\udc80", " "]),
                       st.characters(codec=None, exclude_categories=()))
TEXT = st.text(CHARACTERS, max_size=12)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(TEXT, inner, max_size=3)),
                           max_leaves=6)
FILE_NAMES = st.one_of(st.sampled_from(FOLDER_NAMES), st.sampled_from(HOSTILE_NAMES), TEXT, JSON_VALUES)
CAPTIONS = st.one_of(TEXT, st.lists(st.one_of(TEXT, JSON_SCALARS), max_size=3), JSON_VALUES)
# Rows that pass every other check, so that most examples get as far as their file names.
GOOD_CAPTIONS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).filter(str.strip)
NAMED_ROWS = st.fixed_dictionaries({"file_name": st.sampled_from(FOLDER_NAMES + HOSTILE_NAMES), "text": GOOD_CAPTIONS},
                                   optional={"group": JSON_SCALARS})
ANY_ROWS = st.fixed_dictionaries({"file_name": FILE_NAMES, "text": CAPTIONS}, optional={"group": JSON_VALUES})
# A line: a row as JSON (its surrogates as \\u escapes), any JSON, or raw bytes (invalid UTF-8, broken JSON); named
# rows three times as likely as each of the others.
LINES = st.one_of(*[rows.map(lambda row: json.dumps(row).encode())
                    for rows in [NAMED_ROWS] * 3 + [ANY_ROWS, JSON_VALUES]], st.binary(max_size=24))


def build_folder(base: str) -> tuple[str, str]:
    """The data folder `base`/data with every kind of entry FOLDER_NAMES can point at, and `base`/outside."""
    root, outside = os.path.join(base, "data"), os.path.join(base, "outside")
    os.makedirs(os.path.join(root, "sub"))
    os.makedirs(os.path.join(root, "empty"))
    os.makedirs(outside)
    files = {"good.png": tiny_png(0), "sub/in.png": tiny_png(1), "bad.png": b"not an image at all",
             "bomb.png": header_only_png(10000, 10000), "big.png": header_only_png(9000, 9000)}
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(data)
    with open(os.path.join(outside, "secret.png"), "wb") as handle:
        handle.write(tiny_png(2))
    os.mkfifo(os.path.join(root, "pipe"))
    for link, target in {"link_in.png": "good.png", "link_out.png": os.path.join(outside, "secret.png"),
                         "link_dir": outside, "link_zero": "/dev/zero", "loop": "loop"}.items():
        os.symlink(target, os.path.join(root, link))
    return root, outside


def refused_or_done(action) -> None:
    try:
        action()
    except UserInputError as error:  # anything else fails the test
        assert_one_line_naming(error)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINES, min_size=0, max_size=4))
def test_any_metadata_opens_or_is_refused_in_one_line_and_nothing_outside_is_opened(lines):
    with tempfile.TemporaryDirectory() as base:
        root, outside = build_folder(base)
        with open(os.path.join(root, "metadata.jsonl"), "wb") as handle:
            handle.write(b"\n".join(line.replace(b"{outside}", outside.encode()) for line in lines))
        with watching_opens() as seen, time_limit(30), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                dataset = open_dataset(root)
            except UserInputError as error:
                assert_one_line_naming(error)
            else:
                refused_or_done(lambda: dataset.content_index(DigestCache(os.path.join(base, "cache"))))
                refused_or_done(dataset.caption_digests)
                refused_or_done(lambda: dataset.metadata_field("group"))
                for index in range(len(dataset)):
                    refused_or_done(lambda: dataset.image(index))
                    dataset.where(index).encode("utf-8")
        assert opened_outside(seen, root) == []
