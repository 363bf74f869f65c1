"""How a training image becomes the model's input, stated in one place.

Policy "resize-crop" (the default), as diffusers' text-to-image training scripts prepare images: colour converted to
RGB (transparency composited on white), the shorter side resized to the model's resolution (bilinear), then a centre
crop to a square. Policy "refuse": any image that is not already RGB at the model's resolution is an error naming it.
Which images change is known before any work (their sizes and modes come from the content index), and the Attributor
logs it once per run. A query image is never changed: it is refused instead (query.py), since its own loss is what is
measured.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

POLICIES = ("resize-crop", "refuse")
DESCRIPTION = ("RGB (transparency composited on white), shorter side resized to {r} px (bilinear), centre crop to "
               "{r}×{r}, as diffusers' text-to-image training scripts do")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (emoji and logos have transparent backgrounds)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_crop(image: Image.Image, resolution: int) -> Image.Image:
    """torchvision's Resize(resolution, BILINEAR) then CenterCrop(resolution), on a PIL image."""
    width, height = image.size
    if (width, height) == (resolution, resolution):
        return image
    short, long = (width, height) if width <= height else (height, width)
    long = int(resolution * long / short)
    size = (resolution, long) if width <= height else (long, resolution)
    if size != (width, height):
        image = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((image.width - resolution) / 2.0))
    top = int(round((image.height - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


def model_input(image: Image.Image, resolution: int) -> np.ndarray:
    """uint8 (resolution, resolution, 3): the pixels the model is given for this training image."""
    return np.asarray(resize_crop(to_rgb(image), resolution))


@dataclass(frozen=True)
class PreprocessPlan:
    """What the preprocessing does to a training set, known from its content index before any pixel is decoded."""

    resolution: int
    total: int
    changed: np.ndarray      # training indices of the images that are converted, resized or cropped
    kinds: dict[str, int]    # e.g. {"mode RGBA": 3, "size 48×40": 2}

    @classmethod
    def of(cls, index: np.ndarray, resolution: int) -> "PreprocessPlan":
        modes = np.char.decode(index["mode"], "ascii")
        other_mode = modes != "RGB"
        other_size = (index["width"] != resolution) | (index["height"] != resolution)
        kinds = Counter(f"mode {m}" for m in modes[other_mode])
        kinds.update(f"size {w}×{h}" for w, h in zip(index["width"][other_size], index["height"][other_size]))
        return cls(resolution, len(index), np.flatnonzero(other_mode | other_size), dict(kinds.most_common()))

    def summary(self, where) -> str:
        """One line for the log, e.g. '3 of 400 training images changed to fit ...: 2 mode RGBA, 1 size 48×40
        (first: cat.png, metadata.jsonl line 4)'."""
        if not len(self.changed):
            return f"training images: all {self.total} are RGB {self.resolution}×{self.resolution}, used as they are"
        kinds = ", ".join(f"{n} {kind}" for kind, n in list(self.kinds.items())[:6])
        return (f"training images: {len(self.changed)} of {self.total} changed to fit the model "
                f"({DESCRIPTION.format(r=self.resolution)}): {kinds} (first: {where(int(self.changed[0]))})")
