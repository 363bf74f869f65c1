"""An offline HTML report: per query, its image and prompt, then the top-K training images with captions and scores.

Everything it shows is a file in the report's own folder (images/), linked by relative paths, so the folder can be
copied, zipped or opened from disk with no server and no network.
"""
from __future__ import annotations

import html
import os

from PIL import Image

from .thumbnails import enlarged, save_png, training_image

THUMB = 96

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.query { display: flex; gap: 1rem; align-items: center; }
.grid { display: flex; flex-wrap: wrap; gap: .8rem; }
figure { margin: 0; width: 7.5rem; font-size: .75rem; }
img { image-rendering: pixelated; border: 1px solid #ccc; }
.score { color: #555; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; font-size: .8rem; } td, th { padding: .1rem .5rem; text-align: left; }
"""


def html_report(attribution, out_dir: str, top_k: int = 16) -> str:
    """Write out_dir/report.html (+ out_dir/images/) and return its path."""
    dataset, parts = attribution.dataset, []
    for q, (query, record) in enumerate(zip(attribution.queries, attribution.records)):
        # The query at its own size (Attribution.load reads it back); the page scales it with crisp pixels.
        src = save_png(Image.fromarray(query.image), out_dir, f"images/query_{q}.png")
        settings = record.get("unlearn", {})
        parts.append(f'<section><h2>Query {q + 1}</h2><div class="query">'
                     f'<img src="{src}" width="{2 * THUMB}" height="{2 * THUMB}" alt="query {q + 1}">'
                     f'<table><tr><th>prompt</th><td>{html.escape(query.prompt)}</td></tr>'
                     f'<tr><th>image</th><td>{html.escape(query.source)}</td></tr>'
                     f'<tr><th>unlearning</th><td>{html.escape(_settings_text(settings))}</td></tr></table></div>'
                     f'<h3>Top {min(top_k, len(dataset))} training images (score τ = loss after − before unlearning)'
                     f'</h3><div class="grid">')
        for row in attribution.top(q, top_k):
            thumb = enlarged(training_image(dataset, row["index"], THUMB), THUMB)
            src = save_png(thumb, out_dir, f"images/train_{row['index']}.png")
            caption = html.escape(row["caption"])
            parts.append(f'<figure><img src="{src}" width="{THUMB}" height="{THUMB}" alt="{caption}">'
                         f'<figcaption>#{row["rank"]} · {caption}<br><span class="score">τ = {row["score"]:.3e}'
                         f'</span><br>index {row["index"]}</figcaption></figure>')
        parts.append("</div></section>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>unlearn-fast attribution</title>"
            f"<style>{_STYLE}</style></head><body><h1>Attribution by unlearning</h1>"
            f"<p>{len(dataset)} training images from {html.escape(str(getattr(dataset, 'source', '')))}; "
            f"work directory {html.escape(attribution.work_dir)}.</p>{''.join(parts)}</body></html>\n")
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path


def _settings_text(settings: dict) -> str:
    keys = ("group", "steps", "alpha", "draws", "seed", "precondition")
    return ", ".join(f"{k} {settings[k]}" for k in keys if k in settings)
