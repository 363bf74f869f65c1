"""The work directory's index page (WORK_DIR/attributions/index.html): every query answered from it, newest first,
each with its thumbnail, prompt, methods, settings, date and a link to its report.

It is rewritten from index.json each time an output is recorded, with links relative to the attributions folder, so
the work directory can be moved or copied and the page opened from disk. An output folder deleted since is listed
without links (a dead link would only mislead).
"""
from __future__ import annotations

import html
import os
from pathlib import Path

from .html import STYLE, THUMB

INDEX_STYLE = """
table.index td { vertical-align: top; padding: .3rem .6rem; border-bottom: 1px solid #eee; font-size: .85rem; }
table.index td.when { white-space: nowrap; color: #555; }
.missing { color: #a33; }
"""


def index_page(index: dict, root: Path) -> str:
    """The page's HTML for index.json's content `index`, whose folders are relative to `root`."""
    rows = []
    for entry in reversed(index.get("outputs", [])):
        folder = Path(entry["folder"]) if os.path.isabs(entry["folder"]) else root / entry["folder"]
        link = Path(os.path.relpath(folder, root)).as_posix()
        report = entry.get("report", "report.html")
        present = (folder / report).is_file()
        methods = ", ".join(entry.get("methods") or ["AbU (attribution by unlearning)"])
        settings = entry.get("settings") or []
        for q, prompt in enumerate(entry.get("prompts", [])):
            thumb = f"{link}/images/query_{q}.png"
            if present and (folder / "images" / f"query_{q}.png").is_file():
                picture = (f'<a href="{html.escape(link)}/{report}"><img src="{html.escape(thumb)}" width="{THUMB}" '
                           f'height="{THUMB}" alt="query: {html.escape(prompt)}"></a>')
                opened = f'<a class="report" href="{html.escape(link)}/{report}">{html.escape(report)}</a>'
            else:
                picture, opened = "", f'<span class="missing">{html.escape(link)} was removed</span>'
            rows.append(f'<tr><td>{picture}</td><td class="prompt">{html.escape(prompt)}</td>'
                        f'<td class="methods">{html.escape(methods)}</td>'
                        f'<td>{html.escape(settings[q] if q < len(settings) else "")}</td>'
                        f'<td class="when">{html.escape(entry.get("written", ""))}</td><td>{opened}</td></tr>')
    latest = index.get("latest")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>unlearn-fast attributions</title>"
            f"<style>{STYLE}{INDEX_STYLE}</style></head><body><h1>Attributions of this work directory</h1>"
            f"<p>{_count(len(rows), 'query', 'queries')} in {_count(len(index.get('outputs', [])), 'output', 'outputs')}"
            + (f'; the newest: <a href="{html.escape(latest)}/'
               f'{html.escape(_report_of(index, latest))}">{html.escape(latest)}</a>'
               if latest and (root / latest / _report_of(index, latest)).is_file() else "")
            + '.</p><table class="index"><tr><th>query</th><th>prompt</th><th>methods</th><th>settings</th>'
            f'<th>written</th><th>report</th></tr>{"".join(rows)}</table></body></html>\n')


def _report_of(index: dict, folder: str) -> str:
    return next((e.get("report", "report.html") for e in index["outputs"] if e["folder"] == folder), "report.html")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
