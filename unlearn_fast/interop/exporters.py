"""Scores in the layouts other attribution tools read, so unlearn_fast can be their backend (or be compared with them).

unlearn_fast's own layout is scores.npy, float32 (num_queries, num_train), higher = more responsible. Two others:

    dattri   a torch tensor (num_train, num_test), saved with torch.save: the layout of dattri's
             ``Attributor.attribute(train_loader, test_loader)`` result.
    TRAK     MadryLab trak's save directory: scores/<experiment>.mmap, a .npy-format memmap (train_set_size,
             num_targets) float32, listed in experiments.json as {experiment: {num_targets, scores_path,
             scores_finalized}}, which is what ``TRAKer.finalize_scores(exp_name)`` leaves behind.

Both are the transpose of ours; the values are copied unchanged (same sign convention: higher = more responsible).
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import UserInputError

FORMATS = ("dattri", "trak")


class ExportError(UserInputError):
    """An export that would overwrite finished work or cannot be written as asked."""


def _checked(scores) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.floating):
        raise ExportError(f"scores must be a float array (num_queries, num_train), got {scores.dtype} "
                          f"{scores.shape}")
    return scores.astype(np.float32, copy=False)


def export_dattri(scores, path: str, overwrite: bool = False) -> str:
    """torch.save of the (num_train, num_test) float32 tensor."""
    import torch

    scores = _checked(scores)
    if os.path.exists(path) and not overwrite:
        raise ExportError(f"{path} exists; pass overwrite to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(torch.from_numpy(np.ascontiguousarray(scores.T)), path)
    return os.path.abspath(path)


def export_trak(scores, save_dir: str, experiment: str, overwrite: bool = False) -> str:
    """Add `experiment` to a TRAK save directory (created if needed; other experiments are kept)."""
    scores = _checked(scores)
    if not experiment or os.sep in experiment or experiment.startswith("."):
        raise ExportError(f"experiment name {experiment!r} must be a plain file name")
    listing = os.path.join(save_dir, "experiments.json")
    experiments = {}
    if os.path.isfile(listing):
        with open(listing, encoding="utf-8") as handle:
            try:
                experiments = json.load(handle)
            except json.JSONDecodeError as error:
                raise ExportError(f"{listing} is not valid JSON ({error}); not touching this folder") from None
    target = os.path.join(os.path.abspath(save_dir), "scores", f"{experiment}.mmap")
    if (experiment in experiments or os.path.exists(target)) and not overwrite:
        raise ExportError(f"{save_dir} already has TRAK experiment {experiment!r}; pass overwrite to replace it")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".partial"
    with open(partial, "wb") as handle:  # written, not memmapped: a full disk is an OSError, never SIGBUS
        np.save(handle, np.ascontiguousarray(scores.T, dtype=np.float32))
    os.replace(partial, target)  # the listing never names a half-written file
    experiments[experiment] = {"num_targets": int(scores.shape[0]), "scores_path": target, "scores_finalized": 1}
    with open(listing + ".partial", "w", encoding="utf-8") as handle:
        json.dump(experiments, handle, indent=1)
    os.replace(listing + ".partial", listing)
    return target


def export_scores(scores, fmt: str, out: str, experiment: str = "unlearn_fast", overwrite: bool = False) -> str:
    """Write (num_queries, num_train) scores as `fmt` ("dattri": a .pt file; "trak": a save directory)."""
    if fmt == "dattri":
        return export_dattri(scores, out, overwrite)
    if fmt == "trak":
        return export_trak(scores, out, experiment, overwrite)
    raise ExportError(f"format {fmt!r}: choose one of {FORMATS}")
