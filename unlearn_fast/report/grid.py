"""Labelled sample grids: one row per prompt, one column per seed."""
from __future__ import annotations

import os

from PIL import Image, ImageDraw

from ..models.sampling import SamplingSettings


def sample_grid(model, prompts: list[str], out_path: str, seeds=range(4), steps: int = SamplingSettings.steps,
                guidance: float = SamplingSettings.guidance,
                scale: int = 3, label_width: int = 150) -> str:
    seeds = list(seeds)
    size = model.resolution * scale
    grid = Image.new("RGB", (label_width + size * len(seeds), size * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(prompts):
        draw.text((4, row * size + size // 2 - 6), prompt, fill="black")
    for column, seed in enumerate(seeds):  # one batch per seed: every prompt at once
        for row, image in enumerate(model.generate(prompts, seed=seed, steps=steps, guidance=guidance)):
            tile = Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST)
            grid.paste(tile, (label_width + column * size, row * size))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    grid.save(out_path)
    return out_path
