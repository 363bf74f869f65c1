"""An offline HTML report: per query, its image and prompt, then the top-K training images with captions and scores.

Everything it shows is a file in the report's own folder (images/, images/full/, ranking.csv, groups.csv), linked by
relative paths, so the folder can be copied, zipped or opened from disk with no server and no network. Beside the
thumbnails: each training image's file name and a link to it at full size, the work directory's prepare settings and
model fingerprint (its manifest), the model folder, the group table (group_by), the query's region mask, and a
two-stage method's stage and candidate count when its records hold them.
"""
from __future__ import annotations

import html
import os

from PIL import Image

from .thumbnails import enlarged, save_png, training_image

THUMB = 96

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.query { display: flex; gap: 1rem; align-items: center; }
.grid { display: flex; flex-wrap: wrap; gap: .8rem; }
figure { margin: 0; width: 7.5rem; font-size: .75rem; }
img { image-rendering: pixelated; border: 1px solid #ccc; }
.score { color: #555; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; font-size: .8rem; } td, th { padding: .1rem .5rem; text-align: left; }
.groups td.num { text-align: right; font-variant-numeric: tabular-nums; }
figcaption a { word-break: break-all; }
"""


def html_report(attribution, out_dir: str, top_k: int = 16) -> str:
    """Write out_dir/report.html (+ out_dir/images/) and return its path."""
    dataset, parts = attribution.dataset, []
    for q, (query, record) in enumerate(zip(attribution.queries, attribution.records)):
        # The query at its own size (Attribution.load reads it back); the page scales it with crisp pixels.
        src = save_png(Image.fromarray(query.image), out_dir, f"images/query_{q}.png")
        settings = record.get("unlearn", {})
        mask = ""
        if query.mask is not None:  # the region beside the query (Attribution.load reads it back)
            mask_src = save_png(query.mask_image(), out_dir, f"images/mask_{q}.png")
            mask = (f'<img class="mask" src="{mask_src}" width="{2 * THUMB}" height="{2 * THUMB}" '
                    f'alt="region mask of query {q + 1}" title="region: white = unlearnt">')
        rows = [("prompt", query.prompt), ("image", query.source),
                ("unlearning" if settings else "settings", record_settings_text(record))]
        rows += [(name, str(record[key])) for name, key in (("region mask", "mask"), ("stage", "stage"),
                                                             ("candidates", "candidates")) if key in record]
        if "trust" in record:  # trust.py: is this answer about the query, or about every query / the caption?
            rows.append(("trust", trust_text(record["trust"])))
        table = "".join(f"<tr><th>{name}</th><td>{html.escape(value)}</td></tr>" for name, value in rows)
        parts.append(f'<section><h2>Query {q + 1}</h2><div class="query">'
                     f'<img src="{src}" width="{2 * THUMB}" height="{2 * THUMB}" alt="query {q + 1}">{mask}'
                     f'<table>{table}</table></div>')
        if attribution.group_by:
            parts.append(_group_table(attribution, q, top_k))
        title, meaning, symbol = method_of(record)
        parts.append(f'<h3>Top {min(top_k, len(dataset))} training images by {html.escape(title)} (score '
                     f'{symbol}: {html.escape(meaning)})</h3><div class="grid">')
        for row in attribution.top(q, top_k):
            thumb = enlarged(training_image(dataset, row["index"], THUMB), THUMB)
            src = save_png(thumb, out_dir, f"images/train_{row['index']}.png")
            full = full_size(dataset, row["index"], out_dir)
            caption, name = html.escape(row["caption"]), html.escape(row["file"])
            parts.append(f'<figure><a href="{full}"><img src="{src}" width="{THUMB}" height="{THUMB}" '
                         f'alt="{caption}"></a><figcaption>#{row["rank"]} · {caption}<br><span class="score">{symbol} = '
                         f'{row["score"]:.3e}</span><br><a class="file" href="{full}">{name}</a> · index '
                         f'{row["index"]}</figcaption></figure>')
        parts.append("</div></section>")
    return write_page(os.path.join(out_dir, "report.html"), "unlearn-fast attribution", STYLE,
                      page_title(attribution.records), attribution, run_table(attribution) + "".join(parts))


def write_page(path: str, title: str, style: str, heading: str, result, body: str) -> str:
    """One report page: its heading, the training set and work directory of `result` (an Attribution or a
    Comparison), then `body`; returns the path."""
    dataset = result.dataset
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(heading)}</h1>"
            f"<p>{len(dataset)} training images from {html.escape(str(getattr(dataset, 'source', '')))}; "
            f"work directory {html.escape(result.work_dir)}.</p>{body}</body></html>\n")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path


def method_of(record: dict) -> tuple[str, str, str]:
    """(title, what the score means, its symbol) of the method that scored a record (methods.base.method_label);
    records written before methods were named are AbU's."""
    name = record.get("method", "abu")
    is_abu = name.startswith("abu") and name != "abu-linear"
    title = record.get("method_title") or ("AbU (attribution by unlearning)" if is_abu else name)
    meaning = record.get("score_meaning") or ("the image's loss after − before unlearning the query" if is_abu
                                               else "higher: more responsible")
    return title, meaning, "τ" if is_abu else "score"


def page_title(records: list[dict]) -> str:
    titles = sorted({method_of(record)[0] for record in records})
    return f"Attribution: {titles[0]}" if len(titles) == 1 else "Attribution"


def trust_text(trust: dict) -> str:
    measured = f"specificity {trust['specificity']:.2f} (1 − correlation with {trust['references']} reference queries)"
    if "caption_only" in trust:
        measured += (f"; top 10 recovered by the prompt alone {trust['caption_only']:.0%}, by the image alone "
                     f"{trust['image_only']:.0%}")
    return f"{trust['verdict']} — {measured}"


def settings_text(settings: dict) -> str:
    """The settings a reader compares, of AbU's unlearning or another method's record."""
    keys = ("group", "steps", "step", "alpha", "draws", "seed", "precondition", "timesteps", "dim", "damping",
            "modality", "candidates")
    return ", ".join(f"{k} {settings[k]}" for k in keys if k in settings)


def record_settings_text(record: dict) -> str:
    """A record's settings as text: AbU's unlearning, else the method's own settings."""
    return settings_text(record.get("unlearn") or record.get("settings") or {}) or "defaults"


def full_size(dataset, index: int, out_dir: str) -> str:
    """The training image as stored (decoded to RGB, written as PNG) in images/full/: a link that works from disk."""
    from ..data.preprocess import to_rgb

    return save_png(to_rgb(dataset.image(index)), out_dir, f"images/full/train_{index}.png")


def run_table(attribution, links: list[str] | None = None) -> str:
    """What produced the scores: the prepare settings and the model's fingerprint from the work directory's
    manifest, the model folder, and the table files (linked)."""
    from ..models.adapter import fingerprint_of
    from ..store.workdir import read_manifest

    manifest = read_manifest(attribution.work_dir) if attribution.work_dir else None
    rows = []
    folders = sorted({record["model"] for record in attribution.records if "model" in record})
    if folders:
        rows.append(("model", ", ".join(folders)))
    if manifest:
        parts = {k.split(".", 1)[1]: v for k, v in manifest.get("inputs", {}).items() if k.startswith("model.")}
        if parts:
            rows.append(("model id", fingerprint_of(parts) + " ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(parts.items())) + ")"))
        settings = manifest.get("settings", {})
        scoring, fisher = settings.get("scoring", {}), settings.get("fisher", {})
        examples = settings.get("fisher_examples")
        rows.append(("prepare", f"timesteps {scoring.get('timesteps')}, flips {'on' if scoring.get('flips') else 'off'}"
                     f", noise {scoring.get('noise', 'example')}, dtype {scoring.get('dtype')}; Fisher rows "
                     f"{'all' if examples is None else examples} (group {settings.get('fisher_group')}, "
                     f"{fisher.get('samples_per_example')} draw(s) per row, damping {fisher.get('damping')})"))
    cells = "".join(f"<tr><th>{name}</th><td>{html.escape(str(value))}</td></tr>" for name, value in rows)
    if links is None:
        links = ["ranking.csv"] + (["groups.csv"] if attribution.group_by else [])
    links = [f'<a href="{html.escape(link)}">{html.escape(link)}</a>' for link in links]
    return f'<table class="run">{cells}<tr><th>tables</th><td>{" · ".join(links)}</td></tr></table>'


def _group_table(attribution, q: int, top_k: int) -> str:
    from ..groups import RULE, TOP_MEAN_K

    rule = f"mean of its top {TOP_MEAN_K} scores" if RULE == "top-mean" else RULE
    rows = []
    for row in attribution.groups(q)[:top_k]:
        files = ", ".join(html.escape(f) for f in row["top_files"])
        rows.append(f'<tr><td class="num">{row["rank"]}</td><td>{html.escape(row["group"])}</td>'
                    f'<td class="num">{row["score"]:.3e}</td><td class="num">{100 * row["positive_share"]:.1f} %</td>'
                    f'<td class="num">{row["size"]}</td><td>{files}</td></tr>')
    return (f'<h3>Groups by {html.escape(attribution.group_by)} (score: the {rule}; share of the positive τ mass)'
            f'</h3><table class="groups"><tr><th>rank</th><th>group</th><th>score</th><th>positive share</th>'
            f'<th>size</th><th>top images</th></tr>{"".join(rows)}</table>')
