"""The ranking table: one row per (query, training image), best first, as parquet and CSV; the group table as CSV."""
from __future__ import annotations

import csv
import os

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("query", "prompt", "rank", "index", "file", "caption", "score")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (OWASP: CSV injection)


def safe_cell(value):
    """A text cell a spreadsheet shows as text: one that would start a formula gets a leading apostrophe (the
    parquet table keeps the exact text)."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, "'")):  # "'" too, so unescaping is exact
        return "'" + value
    return value


def unescaped_cell(text: str) -> str:
    """The text safe_cell was given (for readers of the CSV)."""
    return text[1:] if text.startswith("'") and text[1:].startswith((*FORMULA_STARTS, "'")) else text


def _csv_rows(rows):
    return ([safe_cell(cell) for cell in row] for row in rows)


def ranking_rows(attribution):
    dataset = attribution.dataset
    keys = [dataset.key(i) for i in range(len(dataset))]
    captions = [" | ".join(dataset.captions(i)) for i in range(len(dataset))]
    for q, query in enumerate(attribution.queries):
        for rank, i in enumerate(attribution.order(q)):
            yield (q, query.prompt, rank + 1, int(i), keys[i], captions[i], float(attribution.scores[q, i]))


def write_ranking(attribution, out_dir: str) -> dict[str, str]:
    rows = list(ranking_rows(attribution))
    columns = {name: [row[c] for row in rows] for c, name in enumerate(COLUMNS)}
    schema = pa.schema([("query", pa.int32()), ("prompt", pa.string()), ("rank", pa.int64()), ("index", pa.int64()),
                        ("file", pa.string()), ("caption", pa.string()), ("score", pa.float32())])
    paths = {"ranking_parquet": os.path.join(out_dir, "ranking.parquet"),
             "ranking_csv": os.path.join(out_dir, "ranking.csv")}
    pq.write_table(pa.table(columns, schema=schema), paths["ranking_parquet"])
    with open(paths["ranking_csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(_csv_rows(rows))
    return paths


GROUP_COLUMNS = ("query", "rank", "group", "score", "positive_share", "size", "top_files")


def write_groups(attribution, out_dir: str) -> str:
    """groups.csv: per query, its groups best first (groups.py: the rule, the positive share); top_files joined by |."""
    path = os.path.join(out_dir, "groups.csv")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(GROUP_COLUMNS)
        for q in range(len(attribution.queries)):
            for row in attribution.groups(q):
                writer.writerow([safe_cell(cell) for cell in (q, row["rank"], row["group"], row["score"],
                                 row["positive_share"], row["size"], " | ".join(row["top_files"]))])
    return path
