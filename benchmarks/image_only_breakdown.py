"""What fills the top 10 of the image-only control (a planted image under an unrelated caption) in an
`evaluate groundtruth` work folder: the plant's copies, images whose caption shares at least half of the control caption's
distinctive words (those in at most 5 % of the captions), the
images pixel similarity puts first, and how much the top 10 stays the same when only the image changes.

Every same-domain case queries its plant under the SAME unrelated caption, over the same base images, so the overlap of
two cases' top 10 (beyond their copies) is what the caption and the query-independent part decide alone.

    python3 benchmarks/image_only_breakdown.py /work/evaluation/gt28 --methods abu abu-all-normalised dtrak pixel random
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

import numpy as np


def _captions(case: str) -> list[str]:
    with open(os.path.join(case, "data", "metadata.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _words(text: str) -> set[str]:
    return {w.strip(":,.").lower() for w in text.split() if w.strip(":,.")}


def _image_only(case: str, method: str) -> tuple[np.ndarray, str] | None:
    folder = os.path.join(case, "attributions", method)
    if not os.path.isfile(os.path.join(folder, "scores.npy")):
        return None
    queries = json.load(open(os.path.join(folder, "attribution.json"), encoding="utf-8"))["queries"]
    for i, query in enumerate(queries):
        if query.get("source") == "control: image only":
            return np.load(os.path.join(folder, "scores.npy"))[i], query["prompt"]
    return None


def breakdown(root: str, methods: list[str], k: int = 10) -> dict:
    cases = sorted(d for d in os.listdir(root) if d.startswith("domain") and os.path.isdir(os.path.join(root, d)))
    out = {}
    for method in methods:
        tops, rows = {}, []
        for case in cases:
            path = os.path.join(root, case)
            found, pixel = _image_only(path, method), _image_only(path, "pixel")
            if found is None:
                continue
            scores, prompt = found
            result = json.load(open(os.path.join(path, "result.json"), encoding="utf-8"))
            copies, captions = set(result["relevant"]), _captions(path)
            # Words in more than 5 % of the captions (e.g. "skin", "tone") say little about which caption it is.
            counts = {}
            for caption in captions:
                for word in _words(caption):
                    counts[word] = counts.get(word, 0) + 1
            control = {w for w in _words(prompt) if counts.get(w, 0) <= 0.05 * len(captions)}
            top = [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
            pixel_top = set(int(i) for i in np.argsort(-pixel[0], kind="stable")[:k]) if pixel else set()
            others = [i for i in top if i not in copies]
            caption_like = [i for i in others if len(_words(captions[i]) & control) >= max(1, len(control) // 2)]
            rows.append({"case": case, "copies": sum(i in copies for i in top), "caption_like": len(caption_like),
                         "pixel_top": len(set(others) & pixel_top), "top": [captions[i] for i in top]})
            tops[case] = set(others)
        overlap = [len(tops[a] & tops[b]) / k for a, b in itertools.combinations(sorted(tops), 2)]
        out[method] = {"cases": rows, "cross_case_overlap": float(np.mean(overlap)) if overlap else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the --out folder of an `evaluate groundtruth` run with controls")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--json", help="also write the breakdown here")
    args = parser.parse_args()
    result = breakdown(args.root, args.methods, args.top)
    print(f"| method | copies in top {args.top} | images sharing the control caption's distinctive words | in pixel's top {args.top} "
          f"| top-{args.top} overlap between cases (other images) |")
    print("|---|---:|---:|---:|---:|")
    for method, entry in result.items():
        rows = entry["cases"]
        if not rows:
            continue
        mean = lambda key: np.mean([r[key] for r in rows])  # noqa: E731
        overlap = entry["cross_case_overlap"]
        print(f"| {method} | {mean('copies'):.1f} | {mean('caption_like'):.1f} | {mean('pixel_top'):.1f} | "
              f"{'' if overlap is None else f'{overlap:.2f}'} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
