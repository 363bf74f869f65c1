"""Pixel-space cosine similarity between the query image and each training image (METHOD.md's simplest baseline).

Images are compared at the model's resolution, as the model sees them (values in [-1, 1]); the training set is read
in chunks, so its size is limited by disk, not memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.dataset import load_pixels
from .base import AttributionMethod


def _unit_rows(pixels: np.ndarray) -> np.ndarray:
    flat = pixels.reshape(len(pixels), -1).astype(np.float32) / 127.5 - 1.0
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


@dataclass
class PixelCosine(AttributionMethod):
    chunk: int = 4096  # training images per read: memory only
    name = "pixel"
    title = "Pixel similarity"
    score_meaning = "cosine similarity of the images' pixels at the model's resolution (1: identical)"

    def settings(self) -> dict:
        return {}  # the chunk size never changes a score

    def score(self, workspace, queries) -> np.ndarray:
        dataset, resolution = workspace.dataset, workspace.model.resolution
        query = _unit_rows(np.stack([q.image for q in queries]))
        scores = np.empty((len(queries), len(dataset)), dtype=np.float32)
        for start in range(0, len(dataset), self.chunk):
            stop = min(start + self.chunk, len(dataset))
            scores[:, start:stop] = query @ _unit_rows(load_pixels(dataset, resolution, range(start, stop))).T
        return scores
