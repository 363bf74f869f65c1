"""Where attributions are written: one folder per set of queries, listed in an index, with a stable `latest` pointer.

    work_dir/attributions/<id>/        what Attribution.save writes (report, ranking, scores) for these queries
    work_dir/attributions/index.json   every output written from this work directory: id, folder, prompts, methods,
                                       settings, time
    work_dir/attributions/index.html   the same as a page: every query (thumbnail, prompt, methods, settings, date,
                                       a link to its report)
    work_dir/attributions/latest       symlink to the newest output folder (index.json names it too)

<id> is the query folder's name for one query (queries/<id>: its image, unlearned weights and losses), so a query
asked again with the same settings writes the same folder, and different queries never share one. Callers hold the
work directory's lock while they write here (Attributor.write_outputs).
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .store import write_json, write_text

INDEX = "index.json"
INDEX_PAGE = "index.html"
LATEST = "latest"


def output_id(records: list[dict], methods: list[str] | None = None) -> str:
    """The output folder's name for these query records: the path of each query's own folder under the work
    directory (queries/<name>, queries/<name>-two-stage/<front>-c<C>, methods/<key> + the query's key), so that two
    queries never share an output folder. methods: a comparison's (its records are every method's)."""
    names = [_record_name(record) for record in records]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    if methods:
        return "compare-" + "-".join(methods) + "-" + digest
    if len(names) == 1:
        return names[0]
    return f"{len(names)}-queries-" + digest


def _record_name(record: dict) -> str:
    parts = [part for part in record["folder"].split("/") if part]
    if parts and parts[0] == "queries":
        parts = parts[1:]
    if record.get("query"):
        parts.append(record["query"])
    return "-".join(parts)


def resolve_output(path: str) -> str:
    """An output folder as the user names it: WORK_DIR/attributions/latest is the folder index.json calls latest
    (the link may be missing where the file system has none)."""
    folder = Path(path)
    if folder.name == LATEST and (folder.parent / INDEX).is_file():
        latest = read_index(folder.parent.parent).get("latest")
        if latest:
            return str(folder.parent / latest)
    return path


def read_index(work_dir: str | os.PathLike) -> dict:
    from .store.chunked import load_json_checked

    path = Path(work_dir) / "attributions" / INDEX
    return load_json_checked(path) if path.is_file() else {"outputs": [], "latest": None}


def record_output(work_dir: str | os.PathLike, folder: str | os.PathLike, result) -> dict:
    """Add (or refresh) `folder` in the work directory's index (index.json, and the page index.html that lists every
    query) and point `latest` at it. result: an Attribution or a Comparison (their index_entry())."""
    from .report.index_page import index_page

    root = Path(work_dir) / "attributions"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(folder).resolve()
    inside = folder.parent == root.resolve()
    entry = {"id": folder.name if inside else str(folder), "folder": folder.name if inside else str(folder),
             **result.index_entry(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    index = read_index(work_dir)
    index["outputs"] = [e for e in index["outputs"] if e["folder"] != entry["folder"]] + [entry]
    if inside:  # an --out elsewhere is listed but is not `latest`: the link and index.json always name one folder
        index["latest"] = entry["folder"]
    write_json(root / INDEX, index)
    write_text(root / INDEX_PAGE, index_page(index, root))
    if inside:  # a relative link, so the work directory can be moved or copied
        link = root / f".{LATEST}.{os.getpid()}.link"
        link.unlink(missing_ok=True)
        try:
            link.symlink_to(folder.name, target_is_directory=True)
            os.replace(link, root / LATEST)
        except OSError:  # no symlinks here: index.json's "latest" still says it
            link.unlink(missing_ok=True)
    return entry
