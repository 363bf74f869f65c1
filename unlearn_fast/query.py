"""A query: the generated image to attribute and the prompt that made it.

Either a user's image file with its prompt, or a prompt + seed that the model generates the image from. The image is
checked against the model before any work starts: a wrong size or colour mode, or an image of one flat colour, is an
error that names the file.

A query may hold a region mask (``with_mask``; the CLI's --mask FILE): a weight in [0, 1] per pixel of the query image.
Unlearning then raises the query's loss inside the region only (engine/unlearn.py); the mask is part of the query's key,
so two masks of one image never share a work-directory folder.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from .errors import UserInputError
from .models.sampling import SamplingSettings


class QueryError(UserInputError):
    """A query the model cannot take (wrong image size or mode, one flat colour, empty or non-Unicode prompt,
    unreadable file)."""


@dataclass
class Query:
    """image: uint8 (H, W, 3); prompt: the caption it was made from; source: a file path or "generated (seed S)"."""

    image: np.ndarray
    prompt: str
    source: str = ""
    seed: int | None = None
    generation: dict = field(default_factory=dict)
    mask: np.ndarray | None = None  # float32 (H, W) in [0, 1], the image's size; None: the whole image
    mask_source: str = ""

    @property
    def key(self) -> str:
        """A short hash of (image pixels, prompt[, mask]): the query's name in the work directory."""
        digest = hashlib.sha256(np.ascontiguousarray(self.image).tobytes())
        digest.update(b"\0" + self.prompt.encode("utf-8"))
        if self.mask is not None:  # an unmasked query keeps the key it always had
            digest.update(b"\0mask" + np.ascontiguousarray(self.mask, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def png_bytes(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return buffer.getvalue()

    def mask_image(self) -> Image.Image:
        """The mask as an 8-bit greyscale image (white = inside the region)."""
        return Image.fromarray(np.round(self.mask * 255).astype(np.uint8), mode="L")

    def mask_png_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.mask_image().save(buffer, format="PNG")
        return buffer.getvalue()

    def with_mask(self, mask: np.ndarray, source: str = "array") -> "Query":
        """This query restricted to a region: mask (H, W) of weights in [0, 1], the image's size."""
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != self.image.shape[:2]:
            raise QueryError(f"mask {source} is {mask.shape[1]}×{mask.shape[0]}; the query image is "
                             f"{self.image.shape[1]}×{self.image.shape[0]} (a mask covers the query image pixel for "
                             "pixel)")
        if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise QueryError(f"mask {source}: weights must lie in [0, 1]")
        if not mask.any():
            raise QueryError(f"mask {source} selects no pixel (all black): the region would have no loss to raise")
        return replace(self, mask=mask, mask_source=source)

    def latent_weight(self, size: tuple[int, int]) -> np.ndarray | None:
        """The mask at the latent resolution (h, w): the area average of each latent cell's pixels, divided by its
        mean so that a masked loss keeps the whole image's scale (α keeps its meaning); None without a mask."""
        if self.mask is None:
            return None
        return latent_weight(self.mask, size)


def latent_weight(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area average of mask (H, W) over an (h, w) grid of equal cells (H, W multiples of h, w), over its mean."""
    (H, W), (h, w) = mask.shape, size
    if H % h or W % w:
        raise QueryError(f"a {W}×{H} mask does not divide into the model's {w}×{h} latent cells")
    cells = mask.astype(np.float64).reshape(h, H // h, w, W // w).mean(axis=(1, 3))
    return (cells / cells.mean()).astype(np.float32)


def _read_image(path: str, what: str, convert: str, accepted: tuple[str, ...]):
    """(mode, size, the image converted to `convert`, or None when its mode is not in `accepted`); QueryError naming
    `what` and the file when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise QueryError(f"{what} {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.mode, image.size, image.convert(convert) if image.mode in accepted else None
    except (OSError, SyntaxError) as error:
        raise QueryError(f"{what} {path} cannot be read as an image: {error}") from error


def read_mask(path: str, image_size: tuple[int, int]) -> np.ndarray:
    """A mask PNG as float32 (H, W) in [0, 1]: mode L or 1 as it is, RGB read as luminance (PIL's L), at exactly the
    query image's size (width, height) — a mask is never resized: which pixels it covers would change."""
    mode, size, grey = _read_image(path, "mask", "L", ("L", "1", "RGB"))
    if grey is None:
        raise QueryError(f"mask {path} has colour mode {mode}; give a greyscale (L), 1-bit or RGB PNG (white = the "
                         "region)")
    if size != tuple(image_size):
        raise QueryError(f"mask {path} is {size[0]}×{size[1]}; the query image is {image_size[0]}×{image_size[1]}")
    return np.asarray(grey, dtype=np.float32) / 255.0


def _shown(prompt) -> str:
    """A prompt for a one-line message: its repr (escapes keep it one printable line), cut at 80 characters."""
    text = repr(prompt)
    if len(text) <= 80:
        return text
    return f"{text[:80]}… ({len(prompt)} characters)" if isinstance(prompt, str) else f"{text[:80]}…"


def check_prompt(prompt: str, where: str) -> str:
    """The prompt, if it is text the model can read: not empty, and valid Unicode (a command-line argument holding
    bytes that are not UTF-8 arrives as lone surrogates, which the text encoder and the query's key cannot encode)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise QueryError(f"{where}: the query needs the prompt its image was generated from (got {_shown(prompt)})")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = error.object[error.start]
        raise QueryError(f"{where}: the prompt {_shown(prompt)} is not valid Unicode text ({bad!r} at character "
                         f"{error.start}: a byte that is not UTF-8?)") from None
    return prompt


def check_not_flat(image: np.ndarray, source: str, hint: str) -> None:
    """A query image of one colour (a blank file, or black from a decoder that gave NaN) has nothing to attribute:
    every score would only say which training images are closest to a flat colour."""
    first = image.reshape(-1, image.shape[-1])[0]
    if (image == first).all():
        colour = tuple(int(v) for v in first)
        raise QueryError(f"query image {source} is one flat colour (every pixel RGB {colour}): there is nothing in it "
                         f"to attribute ({hint})")


def query_from_file(path: str, prompt: str, resolution: int) -> Query:
    """Read an RGB image of exactly resolution × resolution pixels (no silent resizing: it would change the loss)."""
    check_prompt(prompt, path)
    mode, size, pixels = _read_image(path, "query image", "RGB", ("RGB",))
    pixels = None if pixels is None else np.array(pixels)
    if mode != "RGB":
        raise QueryError(f"query image {path} has colour mode {mode}; the model takes RGB images "
                         f"(convert it, e.g. PIL's Image.convert('RGB'), after checking how transparency should look)")
    if size != (resolution, resolution):
        raise QueryError(f"query image {path} is {size[0]}×{size[1]}; the model takes {resolution}×{resolution} "
                         f"(resize it the way its training images were resized)")
    check_not_flat(pixels, path, "a blank image, or one exported before it was drawn?")
    return Query(image=pixels, prompt=prompt, source=os.path.abspath(path))


def query_from_array(image: np.ndarray, prompt: str, resolution: int, source: str = "array") -> Query:
    check_prompt(prompt, source)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (resolution, resolution, 3):
        raise QueryError(f"{source}: query image must be uint8 ({resolution}, {resolution}, 3), got "
                         f"{image.dtype} {image.shape}")
    return Query(image=image, prompt=prompt, source=source)


def query_from_prompt(model, prompt: str, seed: int = SamplingSettings.seed, steps: int = SamplingSettings.steps,
                      guidance: float = SamplingSettings.guidance, progress: bool = False) -> Query:
    """Generate the query image with `model` (DDIM, classifier-free guidance, the given seed); progress: a bar over
    the sampling steps."""
    check_prompt(prompt, "generated query")
    image = model.generate([prompt], seed=seed, steps=steps, guidance=guidance, progress=progress)[0]
    check_not_flat(image, f"generated from prompt {_shown(prompt)} (seed {seed}, {steps} steps, guidance {guidance})",
                   "the model's decoder or sampler is broken, or cannot take these sampling settings")
    return Query(image=image, prompt=prompt, source=f"generated (seed {seed})", seed=seed,
                 generation={"seed": seed, "steps": steps, "guidance": guidance})
