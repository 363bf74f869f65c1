"""The report as one PNG: per query a row with the query image, then its top-K training images, ranks and scores."""
from __future__ import annotations

import os

from PIL import Image, ImageDraw

from .thumbnails import enlarged, training_image

TILE, LABEL = 96, 30


def contact_sheet(attribution, path: str, top_k: int = 16) -> str:
    k = min(top_k, len(attribution.dataset))
    width, height = (k + 1) * (TILE + 8) + 8, len(attribution.queries) * (TILE + LABEL + 16) + 8
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for q, query in enumerate(attribution.queries):
        top = 8 + q * (TILE + LABEL + 16)
        sheet.paste(enlarged(Image.fromarray(query.image), TILE).resize((TILE, TILE)), (8, top))
        draw.rectangle((6, top - 2, 9 + TILE, top + TILE + 1), outline="red", width=2)
        draw.text((8, top + TILE + 2), _fit(query.prompt, 16), fill="black")
        for column, row in enumerate(attribution.top(q, k), start=1):
            left = 8 + column * (TILE + 8)
            tile = enlarged(training_image(attribution.dataset, row["index"], TILE), TILE)
            sheet.paste(tile.resize((TILE, TILE)), (left, top))
            draw.text((left, top + TILE + 2), f"#{row['rank']} {_fit(row['caption'], 12)}", fill="black")
            draw.text((left, top + TILE + 14), f"{row['score']:.2e}", fill="#555555")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    sheet.save(path)
    return path


def _fit(text: str, chars: int) -> str:
    # PIL's built-in font covers Latin-1 only: other characters become '?'.
    text = text if len(text) <= chars else text[:chars - 2] + ".."
    return text.encode("latin-1", "replace").decode("latin-1")
