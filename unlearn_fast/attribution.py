"""The result of attributing queries: scores (queries, N) over the training set, and everything written from them.

    out/scores.npy           float32 (queries, N): τ, higher = more responsible (DESIGN.md's layout)
    out/ranking.parquet/.csv query, prompt, rank, index, file, caption, score (every training image, best first)
    out/report.html          offline gallery (query image, prompt, top-K thumbnails with captions and scores)
    out/contact_sheet.png    the same as one picture
    out/attribution.json     queries, settings, timings, where the data came from: `unlearn-fast report` reads it
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .data.dataset import CaptionedImages
from .evaluate.metrics import ranking


@dataclass
class Attribution:
    scores: np.ndarray
    queries: list  # Query objects (image, prompt, source)
    records: list[dict]
    dataset: CaptionedImages
    work_dir: str = ""
    timings: dict = field(default_factory=dict)

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

    def summary(self, top_k: int = 5) -> dict:
        return {"work_dir": self.work_dir, "num_train": len(self.dataset), "timings_s": self.timings,
                "queries": [{"prompt": query.prompt, "source": query.source, "folder": record["folder"],
                             "top": self.top(q, top_k)}
                            for q, (query, record) in enumerate(zip(self.queries, self.records))]}

    def save(self, out_dir: str, top_k: int = 16) -> dict:
        """Write every output; returns {name: path}."""
        from .report.contact_sheet import contact_sheet
        from .report.html import html_report
        from .report.tables import write_ranking

        os.makedirs(out_dir, exist_ok=True)
        paths = {"scores": os.path.join(out_dir, "scores.npy")}
        np.save(paths["scores"], self.scores)
        paths.update(write_ranking(self, out_dir))
        paths["report"] = html_report(self, out_dir, top_k=top_k)
        paths["contact_sheet"] = contact_sheet(self, os.path.join(out_dir, "contact_sheet.png"), top_k=top_k)
        record = {"data": getattr(self.dataset, "reopen_args", None), "work_dir": self.work_dir,
                  "timings_s": self.timings, "queries": self.records,
                  "files": {k: os.path.basename(v) for k, v in paths.items()}}
        with open(os.path.join(out_dir, "attribution.json"), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
        return {k: os.path.abspath(v) for k, v in paths.items()}

    @classmethod
    def load(cls, out_dir: str, dataset: CaptionedImages | None = None) -> "Attribution":
        """Read back what save wrote (the report folder is self-contained); the dataset is reopened from its source."""
        from PIL import Image

        from .data.dataset import open_dataset
        from .query import Query

        with open(os.path.join(out_dir, "attribution.json"), encoding="utf-8") as handle:
            record = json.load(handle)
        if dataset is None:
            if not record.get("data"):
                raise ValueError(f"{out_dir}: the training set was not opened with open_dataset, so it cannot be "
                                 "reopened; pass it to Attribution.load(out_dir, dataset)")
            dataset = open_dataset(**record["data"])
        queries = [Query(image=np.array(Image.open(os.path.join(out_dir, "images", f"query_{q}.png")).convert("RGB")),
                         prompt=rec["prompt"], source=rec["source"]) for q, rec in enumerate(record["queries"])]
        scores = np.load(os.path.join(out_dir, "scores.npy"))
        return cls(scores=scores, queries=queries, records=record["queries"], dataset=dataset,
                   work_dir=record["work_dir"], timings=record.get("timings_s", {}))
