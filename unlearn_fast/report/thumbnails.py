"""Training and query images as small PNG files beside a report (the report never points outside its folder)."""
from __future__ import annotations

import os

from PIL import Image

from ..data.preprocess import to_rgb


def training_image(dataset, index: int, size: int) -> Image.Image:
    image = to_rgb(dataset.image(index))
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    return image


def enlarged(image: Image.Image, size: int) -> Image.Image:
    """Small images (the default set is 32×32) are enlarged with nearest-neighbour so pixels stay crisp."""
    if max(image.size) >= size:
        return image
    scale = max(1, size // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def save_png(image: Image.Image, out_dir: str, relative: str) -> str:
    path = os.path.join(out_dir, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
    return relative
