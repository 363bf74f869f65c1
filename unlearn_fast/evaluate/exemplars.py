"""Exemplars of a new concept for the customisation benchmark: made here, so they come from outside any data set.

The concept is one object (a ring of alternating wedges in two seeded colours around a dark hub) seen in several
"photos": each exemplar varies its rotation, size, position and background. They resemble one another, as photos of one
thing do, and nothing in the emoji set (centred glyphs on white).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def concept_exemplars(resolution: int, count: int = 4, seed: int = 0, supersample: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    colours = [tuple(int(c) for c in rng.integers(40, 216, 3)) for _ in range(2)]
    size = resolution * supersample
    images = []
    for _ in range(count):
        background = tuple(int(c) for c in rng.integers(170, 230, 3))
        canvas = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(canvas)
        radius = size * rng.uniform(0.30, 0.42)
        cx, cy = size / 2 + rng.uniform(-0.08, 0.08, 2) * size
        start = rng.uniform(0, 360)
        for wedge in range(8):
            draw.pieslice([cx - radius, cy - radius, cx + radius, cy + radius], start + 45 * wedge,
                          start + 45 * (wedge + 1), fill=colours[wedge % 2])
        hub = radius * 0.35
        draw.ellipse([cx - hub, cy - hub, cx + hub, cy + hub], fill=(30, 30, 40))
        images.append(np.array(canvas.resize((resolution, resolution), Image.LANCZOS)))
    return images
