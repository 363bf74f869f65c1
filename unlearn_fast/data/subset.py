"""--subset FILE: attribute over part of a training set. The file lists the images to keep, one per line (or a .json
list, or a .npy array): file names (the keys the set gives its images, e.g. metadata.jsonl's file_name) or 0-based
row indices. Lines that are blank or start with # are skipped. Every entry is checked before any work: an unknown
name or an index out of range is refused naming the file and its line."""
from __future__ import annotations

import json
import os

import numpy as np

from .dataset import CaptionedImages, DataError, SubsetDataset


def listed_entries(path: str) -> list[tuple[int, str]]:
    """(line, entry) of each image a list file names: one per line (blank lines and # comments skipped), a .json
    list or a .npy array (its position counts as the line). The entries are left as text, to be read as names or
    indices by the caller."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".npy"):
        return [(k + 1, str(int(v))) for k, v in enumerate(np.load(path, allow_pickle=False).ravel())]
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith(".json"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, list):
            raise DataError(f"{path}: expected a JSON list of file names or indices")
        return [(k + 1, str(v)) for k, v in enumerate(values)]
    return [(k + 1, line.strip()) for k, line in enumerate(text.splitlines())
            if line.strip() and not line.strip().startswith("#")]


def read_subset(path: str, dataset: CaptionedImages) -> list[int]:
    """The row indices of `dataset` that `path` names, in the file's order (DataError naming the culprit)."""
    entries = listed_entries(path)
    if not entries:
        raise DataError(f"{path}: names no image")
    keys = {dataset.key(i): i for i in range(len(dataset))}
    chosen, seen = [], {}
    for line, entry in entries:
        if entry in keys:
            index = keys[entry]
        elif entry.lstrip("-").isdigit():
            index = int(entry)
            if not 0 <= index < len(dataset):
                raise DataError(f"{path} line {line}: index {index} is outside the training set's {len(dataset)} "
                                "images (indices count from 0)")
        else:
            raise DataError(f"{path} line {line}: {entry[:80]!r} is neither an image of the training set (e.g. "
                            f"{dataset.key(0)!r}) nor a row index")
        if index in seen:
            raise DataError(f"{path} line {line}: {entry[:80]!r} repeats line {seen[index]}")
        seen[index] = line
        chosen.append(index)
    return chosen


def subset_of(dataset: CaptionedImages, path: str) -> SubsetDataset:
    return SubsetDataset(dataset, read_subset(path, dataset))
