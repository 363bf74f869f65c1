"""A query: the generated image to attribute and the prompt that made it.

Either a user's image file with its prompt, or a prompt + seed that the model generates the image from. The image is
checked against the model before any work starts: a wrong size or colour mode is an error that names the file.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import UserInputError


class QueryError(UserInputError):
    """A query the model cannot take (wrong image size or mode, empty prompt, unreadable file)."""


@dataclass
class Query:
    """image: uint8 (H, W, 3); prompt: the caption it was made from; source: a file path or "generated (seed S)"."""

    image: np.ndarray
    prompt: str
    source: str = ""
    seed: int | None = None
    generation: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A short hash of (image pixels, prompt): the query's name in the work directory."""
        digest = hashlib.sha256(np.ascontiguousarray(self.image).tobytes())
        digest.update(b"\0" + self.prompt.encode("utf-8"))
        return digest.hexdigest()[:16]

    def png_bytes(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return buffer.getvalue()


def _check_prompt(prompt: str, where: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise QueryError(f"{where}: the query needs the prompt its image was generated from (got {prompt!r})")
    return prompt


def query_from_file(path: str, prompt: str, resolution: int) -> Query:
    """Read an RGB image of exactly resolution × resolution pixels (no silent resizing: it would change the loss)."""
    _check_prompt(prompt, path)
    if not os.path.isfile(path):
        raise QueryError(f"query image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            mode, size = image.mode, image.size
            pixels = np.array(image.convert("RGB")) if mode == "RGB" else None
    except (OSError, SyntaxError) as error:
        raise QueryError(f"query image {path} cannot be read as an image: {error}") from error
    if mode != "RGB":
        raise QueryError(f"query image {path} has colour mode {mode}; the model takes RGB images "
                         f"(convert it, e.g. PIL's Image.convert('RGB'), after checking how transparency should look)")
    if size != (resolution, resolution):
        raise QueryError(f"query image {path} is {size[0]}×{size[1]}; the model takes {resolution}×{resolution} "
                         f"(resize it the way its training images were resized)")
    return Query(image=pixels, prompt=prompt, source=os.path.abspath(path))


def query_from_array(image: np.ndarray, prompt: str, resolution: int, source: str = "array") -> Query:
    _check_prompt(prompt, source)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (resolution, resolution, 3):
        raise QueryError(f"{source}: query image must be uint8 ({resolution}, {resolution}, 3), got "
                         f"{image.dtype} {image.shape}")
    return Query(image=image, prompt=prompt, source=source)


def query_from_prompt(model, prompt: str, seed: int = 0, steps: int = 50, guidance: float = 3.0) -> Query:
    """Generate the query image with `model` (DDIM, classifier-free guidance, the given seed)."""
    _check_prompt(prompt, "generated query")
    image = model.generate([prompt], seed=seed, steps=steps, guidance=guidance)[0]
    return Query(image=image, prompt=prompt, source=f"generated (seed {seed})", seed=seed,
                 generation={"seed": seed, "steps": steps, "guidance": guidance})
