"""Several methods' answers to the same queries over the same training set, side by side (`attribute --methods`).

    out/comparison.html      the query beside each method's top k (one labelled column per method), each image's
                             rank under every method, where the methods agree, each method's trust signals
    out/comparison.csv       per query, every image in some method's top k: its rank and score under each method
    out/comparison.json      the methods (name, title, what the score means), the queries, the agreement numbers
    out/<method>/            each method's own attribution folder (scores.npy, ranking, report.html: attribution.py)

Ranks are 1-based positions in a method's ranking (ranking.py: by decreasing score, ties by index), so "#3 under
D-TRAK" means the same thing in every column. The folder is written beside its final name and swapped in whole.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

import numpy as np

from .attribution import Attribution, check_top_k, written_whole
from .errors import OutputError, SettingsError
from .ranking import positions_in, ranking, spearman
from .report.html import method_of, record_settings_text
from .report.settings import ReportSettings
from .store.integrity import read_listed

COMPARISON_RECORD = "comparison.json"


@dataclass
class Comparison:
    """attributions: method name → its Attribution of the same queries over the same training set, in the order
    the methods were asked for."""

    attributions: dict[str, Attribution]

    def __post_init__(self):
        if not self.attributions:
            raise SettingsError("a comparison needs at least one method")
        shapes = {name: a.scores.shape for name, a in self.attributions.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"methods compared on different queries or training sets: score shapes {shapes}")
        self._orders, self._positions = {}, {}

    @property
    def methods(self) -> list[str]:
        return list(self.attributions)

    @property
    def first(self) -> Attribution:
        return next(iter(self.attributions.values()))

    queries = property(lambda self: self.first.queries)
    dataset = property(lambda self: self.first.dataset)
    work_dir = property(lambda self: self.first.work_dir)

    @property
    def group_by(self) -> str | None:
        return self.first.group_by

    @group_by.setter
    def group_by(self, field: str | None) -> None:
        """Every method's folder ranks the groups of this metadata field (groups.csv, its report's group table)."""
        for attribution in self.attributions.values():
            attribution.group_by = field

    @property
    def records(self) -> list[dict]:
        """Per query, every method's record (the outputs index reads the query folders and settings from them)."""
        return [record for attribution in self.attributions.values() for record in attribution.records]

    def label(self, method: str) -> tuple[str, str, str]:
        """(title, what the score means, its symbol) of a method (report.html.method_of)."""
        return method_of(self.attributions[method].records[0])

    def order(self, method: str, q: int) -> np.ndarray:
        """Training indices by the method's score for query q, best first (ranking.ranking, computed once)."""
        if (method, q) not in self._orders:
            self._orders[(method, q)] = ranking(self.attributions[method].scores[q])
        return self._orders[(method, q)]

    def positions(self, method: str, q: int) -> np.ndarray:
        """(N,) 1-based rank of every image under the method for query q."""
        if (method, q) not in self._positions:
            self._positions[(method, q)] = positions_in(self.order(method, q))
        return self._positions[(method, q)]

    def top(self, method: str, q: int, k: int) -> list[dict]:
        """Method's top k for query q (Attribution.top's rows), each image with its rank under every method."""
        rows = self.attributions[method].top(q, k)
        for row in rows:
            row["ranks"] = {m: int(self.positions(m, q)[row["index"]]) for m in self.methods}
        return rows

    def agreement(self, q: int, k: int) -> list[dict]:
        """Every pair of methods: the share of their top k they have in common and Spearman's correlation of their
        whole rankings."""
        k = min(k, len(self.dataset))
        pairs = []
        for i, a in enumerate(self.methods):
            for b in self.methods[i + 1:]:
                common = np.intersect1d(self.order(a, q)[:k], self.order(b, q)[:k])
                pairs.append({"a": a, "b": b, "top_k_overlap": len(common) / k, "spearman": round(spearman(
                    self.attributions[a].scores[q], self.attributions[b].scores[q]), 4)})
        return pairs

    def agreed(self, q: int, k: int) -> list[dict]:
        """The images in the top k of two methods or more: most methods first, then by their best rank."""
        found = {}
        for method in self.methods:
            for index in self.order(method, q)[:k].tolist():
                found.setdefault(index, []).append(method)
        rows = [{"index": index, "file": self.dataset.key(index), "caption": " | ".join(self.dataset.captions(index)),
                 "methods": methods, "ranks": {m: int(self.positions(m, q)[index]) for m in self.methods}}
                for index, methods in found.items() if len(methods) >= 2]
        return sorted(rows, key=lambda row: (-len(row["methods"]), min(row["ranks"].values()), row["index"]))

    def summary(self, top_k: int = 5) -> dict:
        return {"work_dir": self.work_dir, "num_train": len(self.dataset), "methods": self.methods,
                "queries": [{"prompt": query.prompt, "source": query.source,
                             "top": {m: self.top(m, q, top_k) for m in self.methods},
                             "agreement": self.agreement(q, top_k),
                             **({"trust": {m: a.records[q]["trust"] for m, a in self.attributions.items()
                                           if "trust" in a.records[q]}} if self._has_trust(q) else {})}
                            for q, query in enumerate(self.queries)]}

    def _has_trust(self, q: int) -> bool:
        return any("trust" in a.records[q] for a in self.attributions.values())

    def index_entry(self) -> dict:
        """What the work directory's index lists for this output (outputs.record_output)."""
        return {"prompts": [query.prompt for query in self.queries], "report": "comparison.html",
                "methods": [self.label(m)[0] for m in self.methods],
                "queries": [a.records[q]["folder"] for a in self.attributions.values() for q in range(len(self.queries))],
                "settings": ["; ".join(f"{m}: {record_settings_text(a.records[q])}" for m, a in self.attributions.items())
                             for q in range(len(self.queries))]}

    def save(self, out_dir: str, top_k: int = ReportSettings.top_k) -> dict:
        """Write every output into out_dir (swapped in whole); returns {name: path}."""
        from .report.comparison import comparison_report

        check_top_k(top_k)
        with written_whole(out_dir) as (work, final):
            for method, attribution in self.attributions.items():
                attribution.save(os.path.join(work, method), top_k=top_k)
            names = {"comparison_csv": self._write_table(work, top_k),
                     "report": os.path.basename(comparison_report(self, work, top_k=top_k))}
            record = {"methods": [{"name": m, "title": self.label(m)[0], "score_meaning": self.label(m)[1],
                                   "folder": m} for m in self.methods],
                      "work_dir": self.work_dir, "num_train": len(self.dataset), "top_k": top_k,
                      "queries": [{"prompt": query.prompt, "source": query.source,
                                   "agreement": self.agreement(q, top_k)} for q, query in enumerate(self.queries)],
                      "files": names}
            with open(os.path.join(work, COMPARISON_RECORD), "w", encoding="utf-8") as handle:
                json.dump(record, handle, indent=2)
        paths = {k: os.path.join(final, v) for k, v in names.items()}
        paths.update({f"method_{m}": os.path.join(final, m) for m in self.methods})
        return paths

    def _write_table(self, out_dir: str, top_k: int) -> str:
        from .report.tables import safe_cell

        path = os.path.join(out_dir, "comparison.csv")
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["query", "prompt", "index", "file", "caption"]
                            + [f"{kind}_{m}" for m in self.methods for kind in ("rank", "score")])
            for q, query in enumerate(self.queries):
                shown = sorted({int(i) for m in self.methods for i in self.order(m, q)[:top_k]},
                               key=lambda i: (min(self.positions(m, q)[i] for m in self.methods), i))
                for i in shown:
                    writer.writerow([q, safe_cell(query.prompt), i, safe_cell(self.dataset.key(i)),
                                     safe_cell(" | ".join(self.dataset.captions(i)))]
                                    + [value for m in self.methods for value in
                                       (int(self.positions(m, q)[i]), repr(float(self.attributions[m].scores[q, i])))])
        return os.path.basename(path)

    @classmethod
    def load(cls, out_dir: str, dataset=None) -> "Comparison":
        """Read back what save wrote: each method's attribution folder, in the recorded order (the training set
        reopened from its source once, unless given)."""
        path = os.path.join(out_dir, COMPARISON_RECORD)
        if not os.path.isfile(path):
            raise OutputError(f"{out_dir}: it has no {COMPARISON_RECORD}; give a folder written by attribute --methods")
        try:
            record = json.loads(read_listed(out_dir, COMPARISON_RECORD))
        except json.JSONDecodeError as error:
            raise OutputError(f"{path}: not valid JSON ({error})") from None
        attributions = {}
        for method in record["methods"]:
            attribution = Attribution.load(os.path.join(out_dir, method["folder"]), dataset=dataset)
            attributions[method["name"]], dataset = attribution, attribution.dataset
        return cls(attributions)


def is_comparison(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, COMPARISON_RECORD))
