"""The result of attributing queries: scores (queries, N) over the training set, and everything written from them.

    out/scores.npy           float32 (queries, N): τ, higher = more responsible (DESIGN.md's layout)
    out/ranking.parquet/.csv query, prompt, rank, index, file, caption, score (every training image, best first)
    out/groups.csv           with group_by: query, rank, group, score, positive share, size, top files (groups.py)
    out/report.html          offline gallery (query image, prompt, top-K thumbnails with captions and scores)
    out/contact_sheet.png    the same as one picture
    out/attribution.json     queries, settings, timings, where the data came from and its fingerprint (the digests
                             of every image and caption row): `unlearn-fast report` reads it, and refuses a training
                             set that changed since (its rows would be labelled with other images' scores)

Every file is listed with its checksum in out/checksums.json, which `Attribution.load` and `unlearn-fast verify`
check. The folder is
written beside its final name and swapped in whole; a link is never followed out of its parent folder.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import numpy as np

from .data.content import DATA_INPUTS, DigestCache, data_fingerprints
from .data.dataset import CaptionedImages
from .errors import OutputError, SettingsError
from .ranking import ranking
from .report.settings import ReportSettings
from .store.integrity import read_listed, write_folder_sums

RECORD = "attribution.json"
OUTPUT_RECORDS = (RECORD, "comparison.json")  # a folder holding one is an output of ours (comparison.py)


def check_output_folder(out_dir: str) -> None:
    """Refuse, before any work, a folder that holds files but is not an attribution (they would be lost)."""
    if os.path.isfile(out_dir):
        raise OutputError(f"output folder {out_dir} is a file")
    ours = any(os.path.isfile(os.path.join(out_dir, name)) for name in OUTPUT_RECORDS)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not ours:
        raise OutputError(f"output folder {out_dir} holds other files ({', '.join(sorted(os.listdir(out_dir))[:3])}) "
                          f"and no {RECORD}: give an empty or new folder")


def check_top_k(top_k) -> int:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise SettingsError(f"top_k must be an integer >= 1 (training images shown per query), got {top_k!r}")
    return top_k


@dataclass
class Attribution:
    scores: np.ndarray
    queries: list  # Query objects (image, prompt, source)
    records: list[dict]
    dataset: CaptionedImages
    work_dir: str = ""
    timings: dict = field(default_factory=dict)
    group_by: str | None = None  # a metadata field: groups.csv, the report's group table (groups.py)
    data_fingerprint: dict | None = None  # data/content.data_fingerprints; None: computed on save

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.scores.shape != (len(self.queries), len(self.dataset)):
            raise ValueError(f"scores of shape {self.scores.shape} for {len(self.queries)} queries and "
                             f"{len(self.dataset)} training images")

    def order(self, q: int = 0) -> np.ndarray:
        """Training indices by decreasing score (ties by index, so the order is reproducible); NaN scores last."""
        return ranking(self.scores[q])

    def top(self, q: int = 0, k: int = 10) -> list[dict]:
        """The k highest-scoring training images of query q: rank (1-based), index, file, caption, score."""
        return [{"rank": rank + 1, "index": int(i), "file": self.dataset.key(int(i)),
                 "caption": " | ".join(self.dataset.captions(int(i))), "score": float(self.scores[q, i])}
                for rank, i in enumerate(self.order(q)[:k])]

    def groups(self, q: int = 0, field: str | None = None, rule: str | None = None) -> list[dict]:
        """Query q's group table over the metadata field (default group_by): groups.group_table's rows, best first,
        each group's top members as training indices and files."""
        from .groups import RULE, group_table

        field = field or self.group_by
        if not field:
            raise ValueError("groups: give the metadata field to group by (or set group_by)")
        rows = group_table(self.scores[q], self.dataset.metadata_field(field), rule or RULE)
        return [{**row, "top_files": [self.dataset.key(i) for i in row["top"]]} for row in rows]

    def summary(self, top_k: int = 5) -> dict:
        def query_summary(q, query, record):
            out = {"prompt": query.prompt, "source": query.source, "folder": record["folder"],
                   "top": self.top(q, top_k)}
            if "trust" in record:
                out["trust"] = record["trust"]
            if self.group_by:
                out["groups"] = self.groups(q)[:top_k]
            return out
        return {"work_dir": self.work_dir, "num_train": len(self.dataset), "timings_s": self.timings,
                **({"group_by": self.group_by} if self.group_by else {}),
                "queries": [query_summary(q, query, record)
                            for q, (query, record) in enumerate(zip(self.queries, self.records))]}

    def index_entry(self) -> dict:
        """What the work directory's index lists for this output (outputs.record_output)."""
        from .report.html import method_of, record_settings_text

        return {"prompts": [query.prompt for query in self.queries], "report": "report.html",
                "methods": sorted({method_of(record)[0] for record in self.records}),
                "queries": [record["folder"] for record in self.records],
                "settings": [record_settings_text(record) for record in self.records]}

    def save(self, out_dir: str, top_k: int = ReportSettings.top_k) -> dict:
        """Write every output into out_dir; returns {name: path}.

        The folder is written beside out_dir and swapped into place when complete: a reader sees the old outputs or
        the new ones, and nothing of an earlier report lingers (old thumbnails). A folder holding other files is refused.
        """
        from .report.contact_sheet import contact_sheet
        from .report.html import html_report
        from .report.tables import write_groups, write_ranking

        check_top_k(top_k)
        with written_whole(out_dir) as (work, final):
            np.save(os.path.join(work, "scores.npy"), self.scores)
            names = {"scores": "scores.npy"}
            names.update({k: os.path.basename(v) for k, v in write_ranking(self, work).items()})
            if self.group_by:
                names["groups_csv"] = os.path.basename(write_groups(self, work))
            names["report"] = os.path.basename(html_report(self, work, top_k=top_k))
            names["contact_sheet"] = os.path.basename(contact_sheet(self, os.path.join(work, "contact_sheet.png"),
                                                                    top_k=top_k))
            record = {"data": getattr(self.dataset, "reopen_args", None), "work_dir": self.work_dir,
                      "data_fingerprint": self.data_fingerprint or data_fingerprint(self.dataset),
                      "num_train": len(self.dataset), "timings_s": self.timings, "queries": self.records,
                      "files": names, "group_by": self.group_by}
            with open(os.path.join(work, RECORD), "w", encoding="utf-8") as handle:
                json.dump(record, handle, indent=2)
        return {k: os.path.join(final, v) for k, v in names.items()}

    @classmethod
    def load(cls, out_dir: str, dataset: CaptionedImages | None = None) -> "Attribution":
        """Read back what save wrote (the report folder is self-contained); the dataset is reopened from its source."""
        from PIL import Image

        from .data import open_dataset
        from .query import Query

        path = os.path.join(out_dir, RECORD)
        if not os.path.isfile(path):
            what = "no such folder" if not os.path.exists(out_dir) else f"it has no {RECORD}"
            raise OutputError(f"{out_dir}: {what}; give a folder written by attribute (WORK_DIR/attributions/<id>, "
                              "or its --out)")
        try:
            record = json.loads(read_listed(out_dir, RECORD))
        except json.JSONDecodeError as error:
            raise OutputError(f"{path}: not valid JSON ({error})") from None
        if dataset is None:
            if not record.get("data"):
                raise ValueError(f"{out_dir}: the training set was not opened with open_dataset, so it cannot be "
                                 "reopened; pass it to Attribution.load(out_dir, dataset)")
            dataset = open_dataset(**record["data"])
        check_same_data(out_dir, record, dataset)
        queries = [Query(image=np.array(Image.open(io.BytesIO(read_listed(
                         out_dir, f"images/query_{q}.png"))).convert("RGB")),
                         prompt=rec["prompt"], source=rec["source"]) for q, rec in enumerate(record["queries"])]
        for q, rec in enumerate(record["queries"]):  # a region query: its mask was saved beside it
            mask = os.path.join(out_dir, "images", f"mask_{q}.png")
            if "mask" in rec and os.path.isfile(mask):
                queries[q] = queries[q].with_mask(np.asarray(Image.open(mask).convert("L"), np.float32) / 255.0,
                                                  rec["mask"])
        scores = np.load(io.BytesIO(read_listed(out_dir, "scores.npy")), allow_pickle=False)
        return cls(scores=scores, queries=queries, records=record["queries"], dataset=dataset,
                   work_dir=record["work_dir"], timings=record.get("timings_s", {}), group_by=record.get("group_by"),
                   data_fingerprint=record.get("data_fingerprint"))


def data_fingerprint(dataset: CaptionedImages) -> dict:
    """The training set's fingerprints as a work directory binds them (image digests come from the digest cache
    while files are unchanged): for attributions not made through a Workspace, and to check a reopened set."""
    return data_fingerprints(dataset.content_index(DigestCache())["digest"], dataset.caption_digests())


def check_same_data(out_dir: str, record: dict, dataset: CaptionedImages) -> None:
    """Refuse (OutputError naming what changed) a training set that is not the one the scores were computed on."""
    saved = record.get("data_fingerprint")
    if saved is None:
        return  # written before attributions carried it
    where = (record.get("data") or {}).get("spec", "the training set")
    if record.get("num_train") not in (None, len(dataset)):
        raise OutputError(f"{out_dir}: {where} now has {len(dataset)} images, {record['num_train']} when this "
                          "attribution was computed: its scores would label other images; attribute again")
    now = data_fingerprint(dataset)
    changed = [name for name in DATA_INPUTS if saved.get(name) != now[name]]
    if not changed:
        return
    what = {"data.images": "the images' bytes or order", "data.captions": "the file names, captions or their order"}
    row = _first_changed_row(out_dir, dataset) if "data.captions" in changed else None
    raise OutputError(f"{out_dir}: {where} changed since this attribution was computed "
                      f"({' and '.join(what[name] for name in changed)} differ"
                      + (f"; first at row {row[0]}: was {row[1]!r}, now {row[2]!r}" if row else "")
                      + "): its scores would label other images; attribute again")


def _first_changed_row(out_dir: str, dataset: CaptionedImages) -> tuple[int, str, str] | None:
    """(row, file then, file now) of the first training row whose file name changed, from the saved ranking."""
    import csv

    from .report.tables import unescaped_cell

    path = os.path.join(out_dir, "ranking.csv")
    if not os.path.isfile(path):
        return None
    was = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["query"] != "0":
                break
            was[int(row["index"])] = unescaped_cell(row["file"])
    for i in range(len(dataset)):
        if i in was and was[i] != dataset.key(i):
            return i, was[i], dataset.key(i)
    return None


@contextlib.contextmanager
def written_whole(out_dir: str):
    """(a fresh folder to write, out_dir's real path): the folder is written beside out_dir and, once the block ends
    without an error, listed with its checksums and swapped into place whole; on an error it is removed. A folder
    holding other files is refused before anything is written."""
    check_output_folder(out_dir)
    final = _real_folder(out_dir)
    _remove_dead_leftovers(final)
    work = f"{final}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        yield work, final
        write_folder_sums(work)
        _swap_into_place(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _real_folder(out_dir: str) -> str:
    """The folder to write: out_dir itself, or for a link the store made (attributions/latest: a relative link to a
    sibling) the folder it names. Any other link is refused: writing through it would replace a folder elsewhere."""
    path = os.path.abspath(out_dir)
    if not os.path.islink(path):
        parent = os.path.realpath(os.path.dirname(path))
        return os.path.join(parent, os.path.basename(path))
    target = os.readlink(path)
    if os.sep in target or target in (os.curdir, os.pardir):
        raise OutputError(f"output folder {out_dir} is a symbolic link to {target}: unlearn-fast does not write "
                          "through links (it would replace that folder); give the real folder")
    return os.path.join(os.path.realpath(os.path.dirname(path)), target)


def _remove_dead_leftovers(final: str) -> None:
    """Remove the half-written (<final>.partial-<pid>) and superseded (<final>.old-<pid>) folders of processes that
    are gone (a killed save leaves them)."""
    parent = os.path.dirname(final)
    if not os.path.isdir(parent):
        return
    leftover = re.compile(re.escape(os.path.basename(final)) + r"\.(partial|old)-(\d+)")
    for name in os.listdir(parent):
        match = leftover.fullmatch(name)
        path = os.path.join(parent, name)
        if match and os.path.isdir(path) and not os.path.islink(path) and not _alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _swap_into_place(new: str, final: str) -> None:
    """Replace folder `final` by folder `new` (both complete); the old one is removed only once the new one is in."""
    if not os.path.exists(final):
        os.replace(new, final)
        return
    old = f"{final}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
