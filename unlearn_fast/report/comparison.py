"""The comparison page: per query, the query beside one labelled column per method (its top k, each image with its rank
under every other method), where the methods agree, and each method's trust signals.

Like report.html it is one offline page whose every image and link is a file of its own folder (images/, the methods'
own folders, comparison.csv), so the folder can be copied or opened from disk. An image in the top k of two methods or
more is marked in every column it appears in.
"""
from __future__ import annotations

import html
import os

from PIL import Image

from .html import STYLE, THUMB, full_size, run_table, trust_text, write_page
from .thumbnails import enlarged, save_png, training_image

COMPARISON_STYLE = """
table.compare { border-collapse: collapse; }
table.compare th.method { vertical-align: top; max-width: 14rem; border-bottom: 2px solid #444; padding: .3rem .5rem; }
table.compare th.method small { display: block; font-weight: normal; color: #555; }
table.compare td { vertical-align: top; padding: .3rem .5rem; border-bottom: 1px solid #eee; font-size: .75rem;
                   max-width: 14rem; }
table.compare td.rank { font-weight: bold; text-align: right; }
td.agreed img { outline: 3px solid #2a8; }
.elsewhere { color: #555; }
table.agreement td.num, table.trust td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def comparison_report(comparison, out_dir: str, top_k: int = 16) -> str:
    """Write out_dir/comparison.html (+ out_dir/images/) and return its path."""
    k = min(top_k, len(comparison.dataset))
    parts = [_methods_table(comparison)]
    for q, query in enumerate(comparison.queries):
        src = save_png(Image.fromarray(query.image), out_dir, f"images/query_{q}.png")
        parts.append(f'<section class="query-section"><h2>Query {q + 1}</h2><div class="query">'
                     f'<img src="{src}" width="{2 * THUMB}" height="{2 * THUMB}" alt="query {q + 1}">'
                     f'<table><tr><th>prompt</th><td>{html.escape(query.prompt)}</td></tr>'
                     f'<tr><th>image</th><td>{html.escape(str(query.source))}</td></tr></table></div>')
        parts.append(_trust_table(comparison, q))
        parts.append(_agreement_table(comparison, q, k))
        parts.append(_columns(comparison, q, k, out_dir))
        parts.append("</section>")
    title = "Attribution: " + " vs ".join(comparison.label(m)[0] for m in comparison.methods)
    return write_page(os.path.join(out_dir, "comparison.html"), "unlearn-fast comparison", STYLE + COMPARISON_STYLE,
                      title, comparison, run_table(comparison, links=["comparison.csv"]) + "".join(parts))


def _methods_table(comparison) -> str:
    rows = []
    for method in comparison.methods:
        title, meaning, symbol = comparison.label(method)
        seconds = sum(v for v in comparison.attributions[method].timings.values() if isinstance(v, (int, float)))
        rows.append(f'<tr><th>{html.escape(title)}</th><td>{symbol}: {html.escape(meaning)}</td>'
                    f'<td><a href="{html.escape(method)}/report.html">its own report</a> · '
                    f'<a href="{html.escape(method)}/ranking.csv">ranking.csv</a></td>'
                    f'<td class="num">{seconds:.1f} s</td></tr>')
    return ('<h2>Methods</h2><table class="methods"><tr><th>method</th><th>what its score means</th><th>files</th>'
            f'<th>time, this run</th></tr>{"".join(rows)}</table>')


def _trust_table(comparison, q: int) -> str:
    rows = [(method, comparison.attributions[method].records[q].get("trust")) for method in comparison.methods]
    rows = [(method, trust) for method, trust in rows if trust]
    if not rows:
        return ""
    cells = "".join(f'<tr><th>{html.escape(comparison.label(m)[0])}</th><td>{html.escape(trust_text(t))}</td></tr>'
                    for m, t in rows)
    return f'<h3>Trust signals</h3><table class="trust">{cells}</table>'


def _agreement_table(comparison, q: int, k: int) -> str:
    pairs = comparison.agreement(q, k)
    if not pairs:
        return ""
    rows = "".join(f'<tr><td>{html.escape(comparison.label(p["a"])[0])}</td><td>'
                   f'{html.escape(comparison.label(p["b"])[0])}</td><td class="num">{p["top_k_overlap"]:.0%}</td>'
                   f'<td class="num">{p["spearman"]:.3f}</td></tr>' for p in pairs)
    agreed = comparison.agreed(q, k)
    listed = ", ".join(f'{html.escape(row["file"])} ({len(row["methods"])} methods)' for row in agreed[:k])
    return (f'<h3>Where the methods agree</h3><table class="agreement"><tr><th>method</th><th>method</th>'
            f'<th>top {k} in common</th><th>Spearman (all images)</th></tr>{rows}</table>'
            f'<p class="agreed-list">In the top {k} of two methods or more ({len(agreed)}): {listed or "none"}.</p>')


def _columns(comparison, q: int, k: int, out_dir: str) -> str:
    """One column per method, headed by its title and what its score means; one row per rank."""
    methods = comparison.methods
    agreed = {row["index"] for row in comparison.agreed(q, k)}
    heads = "".join(f'<th class="method" data-method="{html.escape(m)}">{html.escape(comparison.label(m)[0])}'
                    f'<small>{html.escape(comparison.label(m)[1])}</small></th>' for m in methods)
    tops = {m: comparison.top(m, q, k) for m in methods}
    rows = []
    for rank in range(k):
        cells = [f'<td class="rank">#{rank + 1}</td>']
        for method in methods:
            row = tops[method][rank]
            cells.append(_cell(comparison, method, row, row["index"] in agreed, out_dir))
        rows.append(f'<tr>{"".join(cells)}</tr>')
    return (f'<h3>Top {k} under each method</h3><table class="compare"><thead><tr><th>rank</th>{heads}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _cell(comparison, method: str, row: dict, agreed: bool, out_dir: str) -> str:
    dataset, index = comparison.dataset, row["index"]
    thumb = save_png(enlarged(training_image(dataset, index, THUMB), THUMB), out_dir, f"images/train_{index}.png")
    full = full_size(dataset, index, out_dir)
    _, _, symbol = comparison.label(method)
    caption, name = html.escape(row["caption"]), html.escape(row["file"])
    elsewhere = " · ".join(f"{html.escape(comparison.label(m)[0])} #{r}" for m, r in row["ranks"].items()
                           if m != method)
    return (f'<td class="{"agreed" if agreed else "single"}"><a href="{full}"><img src="{thumb}" width="{THUMB}" '
            f'height="{THUMB}" alt="{caption}"></a><br>{caption}<br><span class="score">{symbol} = '
            f'{row["score"]:.3e}</span><br><span class="elsewhere">{elsewhere}</span><br>'
            f'<a class="file" href="{full}">{name}</a></td>')
