"""Training-set readers: the embedded default set, round trips through every user format, and clear errors."""
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unlearn_fast.data import (
    DEFAULT_DATASET,
    CaptionedImages,
    DataError,
    Example,
    export_imagefolder,
    export_webdataset,
    load_pixels,
    open_dataset,
)
from unlearn_fast.data.webdataset_shards import expand_braces

KNOWN_CAPTIONS = ("red apple", "grinning face", "cat face", "flag: Japan", "thumbs up")


class InMemoryImages(CaptionedImages):
    """A small set built in the test: keys, caption tuples and PIL images."""

    source = "<memory>"

    def __init__(self, keys, captions, images):
        self._examples = [Example(i, k, tuple(c)) for i, (k, c) in enumerate(zip(keys, captions))]
        self._images = images

    def __len__(self):
        return len(self._examples)

    def example(self, index):
        return self._examples[self._check_index(index)]

    def image(self, index):
        return self._images[self._check_index(index)]


def random_image(seed, size=(8, 8)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def all_captions(dataset):
    return [dataset.captions(i) for i in range(len(dataset))]


def all_keys(dataset):
    return [dataset.key(i) for i in range(len(dataset))]


def assert_same_set(actual, expected, expected_pixels):
    assert all_keys(actual) == all_keys(expected)
    assert all_captions(actual) == all_captions(expected)
    np.testing.assert_array_equal(load_pixels(actual, expected_pixels.shape[1]), expected_pixels)
    np.testing.assert_array_equal(actual.caption_digests(), expected.caption_digests())  # bytes differ: re-encoded


def write_folder(root, rows, images=None):
    """An image folder: ``rows`` are metadata.jsonl lines (dicts, or raw strings written as they are)."""
    os.makedirs(root, exist_ok=True)
    for name, image in (images or {}).items():
        image.save(os.path.join(root, name))
    with open(os.path.join(root, "metadata.jsonl"), "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(root)


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def default():
    return open_dataset("default")


@pytest.fixture(scope="module")
def default_pixels(default):
    return load_pixels(default, 32)


@pytest.fixture(scope="module")
def default_shards(default, tmp_path_factory):
    return export_webdataset(default, str(tmp_path_factory.mktemp("shards")), images_per_shard=1000)


# --- the embedded default set ---------------------------------------------------------------------------------------


def test_default_set_opens_with_known_captions(default, default_pixels):
    assert 3900 <= len(default) <= 4000
    assert default_pixels.shape == (len(default), 32, 32, 3) and default_pixels.dtype == np.uint8
    image = default.image(0)
    assert image.mode == "RGB" and image.size == (32, 32)
    captions = all_captions(default)
    assert all(captions_of_one and all(c.strip() for c in captions_of_one) for captions_of_one in captions)
    flat = {c for captions_of_one in captions for c in captions_of_one}
    assert set(KNOWN_CAPTIONS) <= flat
    assert len(set(all_keys(default))) == len(default)
    assert default.source == DEFAULT_DATASET


def test_default_set_images_are_not_blank(default_pixels):
    # Catches a broken build that composited every emoji to plain white.
    assert (default_pixels.reshape(len(default_pixels), -1).min(axis=1) < 200).mean() > 0.95


def test_caption_for_known_twemoji_file_names():
    pytest.importorskip("emoji")
    from unlearn_fast.data.emoji_builder import caption_for

    assert caption_for("1f1ef-1f1f5.png") == "flag: Japan"
    assert caption_for("1f44d.png") == "thumbs up"
    assert caption_for("1f44d-1f3fd.png") == "thumbs up: medium skin tone"
    assert caption_for("1f468-1f3fe-200d-1f33e.png") == "man farmer: medium-dark skin tone"
    assert caption_for("1f3f4-e0067-e0062-e0065-e006e-e0067-e007f.png") == "flag: England"
    assert caption_for("1f34e.png") == "red apple"


# --- round trips through the user formats ----------------------------------------------------------------------------


def test_default_exports_to_imagefolder_and_reopens_identically(default, default_pixels, tmp_path):
    assert export_imagefolder(default, str(tmp_path / "folder")) == len(default)
    assert_same_set(open_dataset(str(tmp_path / "folder")), default, default_pixels)


def test_default_exports_to_webdataset_shards_and_reopens_identically(default, default_pixels, default_shards):
    assert len(default_shards) == -(-len(default) // 1000) >= 2
    folder = os.path.dirname(default_shards[0])
    assert_same_set(open_dataset(folder), default, default_pixels)
    pattern = os.path.join(folder, f"shard-{{000000..{len(default_shards) - 1:06d}}}.tar")
    assert all_keys(open_dataset(pattern)) == all_keys(default)
    first_shard = open_dataset(default_shards[0])
    assert all_keys(first_shard) == all_keys(default)[:1000]


def test_webdataset_library_reads_our_shards_as_the_same_samples(default, default_shards):
    webdataset = pytest.importorskip("webdataset")
    samples = list(webdataset.WebDataset(default_shards, shardshuffle=False))
    assert [s["__key__"] + ".png" for s in samples] == all_keys(default)
    assert [(s["txt"].decode(),) for s in samples] == all_captions(default)


def test_reads_shards_written_by_the_webdataset_library(tmp_path):
    webdataset = pytest.importorskip("webdataset")
    images = [random_image(i) for i in range(3)]
    path = str(tmp_path / "laion-000.tar")
    with webdataset.TarWriter(path) as writer:
        writer.write({"__key__": "a/000", "png": png_bytes(images[0]), "txt": "a red square"})
        writer.write({"__key__": "a/001", "png": png_bytes(images[1]), "json": {"caption": "a cat", "w": 8}})
        writer.write({"__key__": "a/002", "png": png_bytes(images[2]), "txt": "x", "json": {"caption": ["one", "two"]}})
    dataset = open_dataset(path, caption_column="caption")
    assert all_keys(dataset) == ["a/000.png", "a/001.png", "a/002.png"]
    # .json[caption_column] wins over .txt; .txt is the fallback when the json lacks the column
    assert all_captions(dataset) == [("a red square",), ("a cat",), ("one", "two")]
    np.testing.assert_array_equal(load_pixels(dataset, 8), np.stack([np.asarray(im) for im in images]))


@pytest.mark.parametrize("as_struct", [False, True], ids=["bytes", "hf-datasets-struct"])
def test_parquet_written_by_user_reopens_identically(default, default_pixels, tmp_path, as_struct):
    rows = range(0, len(default), 10)
    encoded = [png_bytes(default.image(i)) for i in rows]
    image_column = [{"bytes": data, "path": default.key(i)} for data, i in zip(encoded, rows)] if as_struct else encoded
    table = pa.table({
        "file_name": [default.key(i) for i in rows],
        "text": [default.captions(i)[0] for i in rows],
        "image": image_column,
    })
    pq.write_table(table, tmp_path / "train.parquet")
    dataset = open_dataset(str(tmp_path / "train.parquet"))
    assert all_keys(dataset) == [default.key(i) for i in rows]
    assert all_captions(dataset) == [default.captions(i) for i in rows]
    np.testing.assert_array_equal(load_pixels(dataset, 32), default_pixels[list(rows)])


def test_a_folder_of_parquet_shards_with_another_image_column_is_one_set(default, default_pixels, tmp_path):
    """A 🤗 datasets layout (data/train-0000k-of-00003.parquet) whose images sit in a column named "img": read in the
    shards' sorted order as one set, bound to the same content as the same rows in one file, and every row named by
    its shard."""
    from unlearn_fast.data.content import DigestCache

    rows = list(range(0, 60, 3))
    table = pa.table({"file_name": [default.key(i) for i in rows], "text": [default.captions(i)[0] for i in rows],
                      "img": [png_bytes(default.image(i)) for i in rows]})
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for k, (start, stop) in enumerate([(0, 7), (7, 14), (14, 20)]):  # written out of order: read sorted
        pq.write_table(table.slice(start, stop - start), tmp_path / "hub" / "data" / f"train-{k:05d}-of-00003.parquet")
    pq.write_table(table, tmp_path / "one.parquet")
    with pytest.raises(DataError, match=r"no column 'image' .*--image-column"):
        open_dataset(str(tmp_path / "hub"))
    shards = open_dataset(str(tmp_path / "hub"), image_column="img")
    one = open_dataset(str(tmp_path / "one.parquet"), image_column="img")
    assert len(shards) == len(rows) and all_keys(shards) == all_keys(one) == [default.key(i) for i in rows]
    assert all_captions(shards) == [default.captions(i) for i in rows]
    np.testing.assert_array_equal(load_pixels(shards, 32), default_pixels[rows])
    np.testing.assert_array_equal(shards.content_index(DigestCache(None)), one.content_index(DigestCache(None)))
    assert shards.fingerprint() == one.fingerprint()
    assert "train-00001-of-00003.parquet row 1)" in shards.where(7)
    assert shards.reopen_args["image_column"] == "img"
    with pytest.raises(DataError, match="names a parquet column; this is not parquet data"):
        open_dataset(str(tmp_path / "nowhere-folder"), image_column="img")


def test_a_subset_file_names_images_by_file_name_or_index_and_a_bad_line_is_named(tmp_path):
    rows = [{"file_name": f"{k}.png", "text": f"caption {k}"} for k in range(6)]
    write_folder(tmp_path / "data", rows)
    (tmp_path / "names.txt").write_text("# the plants\n4.png\n\n1.png\n5\n")
    subset = open_dataset(str(tmp_path / "data"), subset=str(tmp_path / "names.txt"))
    assert all_keys(subset) == ["4.png", "1.png", "5.png"] and all_captions(subset)[0] == ("caption 4",)
    assert subset.reopen_args["subset"] == str(tmp_path / "names.txt")
    (tmp_path / "indices.json").write_text("[0, 2]")
    assert all_keys(open_dataset(str(tmp_path / "data"), subset=str(tmp_path / "indices.json"))) == ["0.png", "2.png"]
    for text, message in (("1.png\nnope.png\n", r"names\.txt line 2: 'nope\.png' is neither an image"),
                          ("1.png\n6\n", r"names\.txt line 2: index 6 is outside the training set's 6 images"),
                          ("1.png\n1\n", r"names\.txt line 2: '1' repeats line 1"),
                          ("# nothing\n", r"names\.txt: names no image")):
        (tmp_path / "names.txt").write_text(text)
        with pytest.raises(DataError, match=message):
            open_dataset(str(tmp_path / "data"), subset=str(tmp_path / "names.txt"))


def test_several_captions_per_image_survive_both_exports(tmp_path):
    captions = [("a cat", "a small cat", "kitten"), ("a dog",), ("a bird", "a sparrow")]
    images = [random_image(i, (10, 6)) for i in range(3)]
    source = InMemoryImages(["cat.png", "dog.png", "bird.png"], captions, images)
    expected = np.stack([np.asarray(im.crop((2, 0, 8, 6))) for im in images])

    export_imagefolder(source, str(tmp_path / "folder"))
    lines = (tmp_path / "folder" / "metadata.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"file_name": "cat.png", "text": ["a cat", "a small cat", "kitten"]}
    assert json.loads(lines[1]) == {"file_name": "dog.png", "text": "a dog"}
    assert_same_set(open_dataset(str(tmp_path / "folder")), source, expected)

    shards = export_webdataset(source, str(tmp_path / "shards"), images_per_shard=2)
    assert len(shards) == 2
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames() == ["cat.png", "cat.json", "dog.png", "dog.txt"]
    assert_same_set(open_dataset(str(tmp_path / "shards")), source, expected)


def test_export_refuses_a_non_empty_folder_and_colliding_keys(tmp_path):
    source = InMemoryImages(["a.png", "a.jpg"], [("x",), ("y",)], [random_image(0), random_image(1)])
    with pytest.raises(DataError, match=r"rows 0 and 1.*'a\.png'"):
        export_imagefolder(source, str(tmp_path / "out"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_imagefolder(source, str(tmp_path / "full"))


def test_brace_patterns_expand_as_braceexpand_does():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    braceexpand = pytest.importorskip("braceexpand")
    for pattern in ("s-{08..10}.tar", "s-{3..1}.tar", "x/{0..10}/{a,bc}.tar"):
        assert expand_braces(pattern) == list(braceexpand.braceexpand(pattern))


# --- pixels and fingerprint -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(60, 40), (40, 60)], ids=["wide", "tall"])
def test_load_pixels_centre_crops_non_square_images(tmp_path, size):
    # Red borders outside the central square, green inside: a centre crop keeps only green.
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0] = 255
    side = min(size)
    top, left = (size[1] - side) // 2, (size[0] - side) // 2
    pixels[top : top + side, left : left + side] = (0, 255, 0)
    root = write_folder(tmp_path, [{"file_name": "x.png", "text": "green"}], {"x.png": Image.fromarray(pixels)})
    dataset = open_dataset(root)
    np.testing.assert_array_equal(load_pixels(dataset, 40)[0], pixels[top : top + side, left : left + side])
    small = load_pixels(dataset, 20)  # shorter side resized to 20 (bilinear), then the centre 20 × 20
    assert small.shape == (1, 20, 20, 3)
    inner = small[0, 1:-1, 1:-1]  # the outermost pixels may blend with the red border under bilinear resizing
    assert inner[..., 1].min() >= 250 and inner[..., 0].max() <= 5


def test_fingerprint_follows_captions_and_image_bytes_not_folder_names(tmp_path):
    images = {"a.png": random_image(0), "b.png": random_image(1)}
    rows = [{"file_name": "a.png", "text": "an apple"}, {"file_name": "b.png", "text": "a banana"}]
    first = open_dataset(write_folder(tmp_path / "one", rows, images)).fingerprint()
    assert open_dataset(write_folder(tmp_path / "two", rows, images)).fingerprint() == first
    rows[1]["text"] = "a ripe banana"
    assert open_dataset(write_folder(tmp_path / "three", rows, images)).fingerprint() != first
    rows[1]["text"] = "a banana"
    changed = np.array(images["b.png"])
    changed[3, 4, 1] ^= 1  # one channel of one pixel
    images["b.png"] = Image.fromarray(changed)
    assert open_dataset(write_folder(tmp_path / "four", rows, images)).fingerprint() != first


def test_digests_are_cached_by_file_stat_and_a_rewrite_is_seen(tmp_path):
    from unlearn_fast.data.content import DigestCache

    images = {f"{i}.png": random_image(i) for i in range(6)}
    root = write_folder(tmp_path / "set", [{"file_name": k, "text": k} for k in images], images)
    cache_folder = str(tmp_path / "cache")
    first = DigestCache(cache_folder)
    index = open_dataset(root).content_index(first)
    assert (first.hits, first.misses) == (0, 6)
    again = DigestCache(cache_folder)  # a new process: only the database is shared
    np.testing.assert_array_equal(open_dataset(root).content_index(again), index)
    assert (again.hits, again.misses) == (6, 0)
    # Rewrite one image with a changed pixel and put its size and mtime back: ctime still tells.
    path = os.path.join(root, "3.png")
    stat = os.stat(path)
    pixels = np.array(images["3.png"])
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = DigestCache(cache_folder)
    changed = open_dataset(root).content_index(third)
    assert (third.hits, third.misses) == (5, 1)
    assert [i for i in range(6) if (changed[i] != index[i])] == [3]


# --- bad input: a DataError that names the culprit ---------------------------------------------------------------------


def test_missing_image_file_names_path_and_row(tmp_path):
    root = write_folder(tmp_path, [{"file_name": "a.png", "text": "a"}, {"file_name": "gone.png", "text": "b"}],
                        {"a.png": random_image(0)})
    dataset = open_dataset(root)
    with pytest.raises(DataError) as error:
        load_pixels(dataset, 8)
    assert os.path.join(root, "gone.png") in str(error.value) and "metadata.jsonl line 2)" in str(error.value)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"file_name": "b.png"}', "no caption column 'text'"),
        ('{"file_name": "b.png", "text": ""}', "caption is empty"),
        ('{"file_name": "b.png", "text": [" ", null]}', "caption is empty"),
        ('{"file_name": "b.png", "text": null}', "no caption"),
        ('{"file_name": "b.png", "text": "b"', "not valid JSON"),
        ('["b.png", "b"]', "expected a JSON object"),
        ('{"text": "b"}', "no 'file_name'"),
    ],
    ids=["no-caption", "empty-caption", "blank-captions", "null-caption", "invalid-json", "not-an-object", "no-file-name"],
)
def test_bad_metadata_line_names_the_file_and_line(tmp_path, bad_line, message):
    root = write_folder(tmp_path, [{"file_name": "a.png", "text": "a"}, "", bad_line])
    with pytest.raises(DataError, match=message) as error:
        open_dataset(root)
    assert f"{os.path.join(root, 'metadata.jsonl')} line 3" in str(error.value)


def test_corrupt_png_names_the_file(tmp_path):
    root = write_folder(tmp_path, [{"file_name": "broken.png", "text": "a"}])
    (tmp_path / "broken.png").write_bytes(png_bytes(random_image(0))[:40])
    with pytest.raises(DataError, match="cannot decode image") as error:
        open_dataset(root).image(0)
    assert os.path.join(root, "broken.png") in str(error.value)


def test_folder_without_metadata_is_refused(tmp_path):
    random_image(0).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="no metadata.jsonl") as error:
        open_dataset(str(tmp_path))
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize("name", ["nowhere", "nowhere.parquet", "nowhere.tar", "nowhere-{0..1}.tar"])
def test_nonexistent_path_is_refused(tmp_path, name):
    with pytest.raises(DataError, match="no such") as error:
        open_dataset(str(tmp_path / name))
    assert "nowhere" in str(error.value)


def test_parquet_without_caption_column_names_file_and_column(tmp_path):
    pq.write_table(pa.table({"image": [png_bytes(random_image(0))], "caption": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"no column 'text'") as error:
        open_dataset(str(tmp_path / "t.parquet"))
    assert str(tmp_path / "t.parquet") in str(error.value)
    assert all_captions(open_dataset(str(tmp_path / "t.parquet"), caption_column="caption")) == [("a",)]


def test_parquet_empty_caption_names_the_row(tmp_path):
    images = [png_bytes(random_image(0))] * 2
    pq.write_table(pa.table({"image": images, "text": ["a", " "]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet row 2: caption is empty"):  # rows counted from 1
        open_dataset(str(tmp_path / "t.parquet"))


@pytest.mark.parametrize(
    "members, message",
    [
        ({"s/001.txt": b"only a caption"}, r"sample 's/001': no image"),
        ({"s/001.png": b"png"}, r"sample 's/001': no caption"),
        ({"s/001.png": b"png", "s/001.txt": b"  "}, r"sample 's/001' \(s/001.txt\): caption is empty"),
        ({"s/001.png": b"png", "s/001.json": b"{oops"}, r"sample 's/001': s/001.json is not valid JSON"),
    ],
    ids=["no-image", "no-caption", "empty-caption", "invalid-json"],
)
def test_bad_webdataset_sample_names_shard_and_key(tmp_path, members, message):
    good = {"s/000.png": png_bytes(random_image(0)), "s/000.txt": b"fine"}
    shard = write_tar(tmp_path / "bad-000.tar", {**good, **members})
    with pytest.raises(DataError, match=message) as error:
        open_dataset(shard)
    assert shard in str(error.value)


def test_corrupt_image_in_shard_names_shard_and_key(tmp_path):
    shard = write_tar(tmp_path / "s.tar", {"k.png": b"\x89PNG not really", "k.txt": b"a caption"})
    dataset = open_dataset(shard)
    with pytest.raises(DataError, match="cannot decode image") as error:
        dataset.image(0)
    assert shard in str(error.value) and "'k.png'" in str(error.value)


def test_file_that_is_not_a_tar_names_the_shard(tmp_path):
    (tmp_path / "fake.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(DataError, match="cannot read as an uncompressed tar") as error:
        open_dataset(str(tmp_path / "fake.tar"))
    assert str(tmp_path / "fake.tar") in str(error.value)
