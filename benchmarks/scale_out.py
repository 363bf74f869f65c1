"""Scale-out measurements (issue 14), each in fresh processes so timings and peak memory are their own:

    python3 benchmarks/scale_out.py ranks    # prepare on 400 default images: torchrun 2 ranks × 1 thread against
                                             # 1 process × 2 threads, side by side; artefacts compared bit for bit
    python3 benchmarks/scale_out.py sweep    # 4 queries: losses after in one sweep against one pass per query
    python3 benchmarks/scale_out.py memory   # the loss pass over 10 k, 100 k and 1 M synthetic rows with the UNet
                                             # swapped for a stand-in: the pipeline's own rows/s and peak memory

Results go to benchmarks/results/scale_out.json (one key per part; a part rerun replaces its key).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale_out.json"


def save(part: str, value) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[part] = value
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def machine() -> dict:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
            "date": time.strftime("%Y-%m-%d %H:%M")}


# ------------------------------------------------------------------------------------------------------- ranks
def ranks(images: int, chunk_rows: int) -> None:
    from unlearn_fast.data import SubsetDataset, export_imagefolder, open_dataset
    from unlearn_fast.store.digests import work_dir_digests

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_imagefolder(SubsetDataset(open_dataset("default"), range(images)), str(tmp / "images"))
        common = ["prepare", "--data", str(tmp / "images"), "--chunk-rows", str(chunk_rows), "--timesteps", "4",
                  "--fisher-examples", "256", "--quiet", "--json"]
        runs = {}
        for label, launcher, threads in (
                ("1 process x 2 threads", [sys.executable, "-m", "unlearn_fast"], 2),
                ("2 ranks x 1 thread", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc-per-node=2", "-m", "unlearn_fast"], 1),
                ("1 process x 1 thread", [sys.executable, "-m", "unlearn_fast"], 1)):
            work = tmp / label.replace(" ", "_")
            started = time.perf_counter()
            out = subprocess.run([*launcher, *common, "--work-dir", str(work), "--threads", str(threads)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            wall = time.perf_counter() - started
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
            runs[label] = {"wall_s": round(wall, 1), "timings_s": summary["timings_s"],
                           "world_size": summary["world_size"], "hashes": work_dir_digests(work)}
            print(label, runs[label]["wall_s"], summary["timings_s"], flush=True)
        one, two, single = runs["1 process x 2 threads"], runs["2 ranks x 1 thread"], runs["1 process x 1 thread"]
        # Bits are the same for any world size at the same threads per process; another thread count may change the
        # blocking of a reduction (oneDNN, OpenMP), so the files that differ are listed, not hidden.
        result = {"machine": machine(), "images": images, "chunk_rows": chunk_rows, "timesteps": 4, "flips": True,
                  "fisher_examples": 256,
                  "same_bits_as_1_process_1_thread": two["hashes"] == single["hashes"],
                  "differ_from_1_process_2_threads": sorted(k for k in one["hashes"]
                                                            if one["hashes"][k] != two["hashes"].get(k)),
                  "runs": {k: {key: v for key, v in run.items() if key != "hashes"} for k, run in runs.items()},
                  "speedup": {phase: round(one["timings_s"][phase] / two["timings_s"][phase], 2)
                              for phase in ("latents", "text", "fisher", "base_losses")}}
        result["speedup"]["wall"] = round(one["wall_s"] / two["wall_s"], 2)
        save("ranks", result)
        print(json.dumps(result["speedup"]), "same bits as one process, one thread:",
              result["same_bits_as_1_process_1_thread"], "differ from 2 threads:",
              result["differ_from_1_process_2_threads"])


# ------------------------------------------------------------------------------------------------------- sweep
def sweep(images: int, queries: int) -> None:
    import torch

    from unlearn_fast.attributor import Attributor
    from unlearn_fast.data import SubsetDataset, load_pixels, open_dataset
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.query import query_from_array
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.engine.unlearn import UnlearnSettings
    from unlearn_fast.workspace import PrepareSettings

    torch.set_num_threads(2)
    model = DiffusionModel.load("default")
    data = SubsetDataset(open_dataset("default"), range(images))
    picks = list(range(0, images, images // queries))[:queries]
    asked = [query_from_array(image, data.captions(i)[0], 32, source=f"training image {i}")
             for image, i in zip(load_pixels(data, 32, picks), picks)]
    settings = PrepareSettings(scoring=LossGrid(timesteps=10), fisher_examples=256)
    unlearning = UnlearnSettings()  # the package's default
    with tempfile.TemporaryDirectory() as tmp:
        Attributor(model, data, f"{tmp}/prepared", settings, progress=False).prepare()
        times = {}
        for label, groups in (("one pass per query", [[q] for q in asked]), ("one sweep", [asked])):
            work = f"{tmp}/{label.replace(' ', '_')}"
            shutil.copytree(f"{tmp}/prepared", work)  # the same prepared artefacts: only the queries' passes run
            attributor = Attributor(model, data, work, settings, progress=False)
            total, scores = 0.0, []
            for group in groups:
                attribution = attributor.attribute(group, unlearning)
                total += attributor.timings["score"]
                scores.append(attribution.scores)
            times[label] = {"score_s": round(total, 2), "scores": np.concatenate(scores)}
            print(label, times[label]["score_s"], flush=True)
        separate, together = times["one pass per query"], times["one sweep"]
        result = {"machine": machine(), "images": images, "queries": queries, "timesteps": 10, "flips": True,
                  "score_s": {k: v["score_s"] for k, v in times.items()},
                  "saving": round(separate["score_s"] / together["score_s"], 2),
                  "same_bits": bool(np.array_equal(separate["scores"], together["scores"]))}
        save("sweep", result)
        print(json.dumps(result))


# ------------------------------------------------------------------------------------------------------ memory
def memory(sizes: list[int], timesteps: int) -> None:
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "memory-one", str(n), str(timesteps)], capture_output=True,
                             text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    unet = _unet_rows_per_s()
    save("memory", {"machine": machine(), "timesteps": timesteps, "flips": True, "rows": rows,
                    "real_unet_rows_per_s": unet})
    print("real UNet rows/s:", unet)


def _unet_rows_per_s() -> float:
    """UNet rows (image × timestep × flip) per second of the shipped model's scoring pass, 2 threads."""
    import torch

    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.engine.scoring import per_example_losses

    torch.set_num_threads(2)
    model = DiffusionModel.load("default")
    x0 = torch.randn(256, *model.latent_shape)
    cond = model.encode_text(["red apple"] * 256)
    grid = LossGrid(timesteps=2, batch_size=512)
    per_example_losses(model, x0[:16], cond[:16], range(16), grid)
    started = time.perf_counter()
    per_example_losses(model, x0, cond, range(256), grid)
    return round(256 * 2 * 2 / (time.perf_counter() - started))


class _PeakAnon:
    """The peak of this process's anonymous resident memory (heap, tensors; not the page cache of memmaps, which
    the kernel can drop), sampled every 20 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def memory_one(n: int, timesteps: int) -> None:
    """One size, in its own process: a synthetic set of n rows (random latents and text, the default model's shapes),
    the base pass and one pass after (a stand-in UNet), and the scores."""
    import torch

    from unlearn_fast.data.content import INFO
    from unlearn_fast.data.dataset import CaptionedImages
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.score_rules import loss_change_scores
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.methods.abu.artefacts import fit_base_losses
    from unlearn_fast.workspace import PrepareSettings, Workspace

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="prompt .* unknown word")  # synthetic captions are not English

    class Synthetic(CaptionedImages):
        """n rows that exist only as their index: the binding digests the index, captions are 'synthetic <i>'."""

        source = "synthetic rows"

        def __len__(self):
            return n

        def example(self, index):
            raise NotImplementedError("synthetic rows have no images: their latents are written directly")

        def image(self, index):
            raise NotImplementedError("synthetic rows have no images: their latents are written directly")

        def captions(self, index):
            return (f"synthetic {index}",)

        def key(self, index):
            return str(index)

        def content_index(self, cache=None):
            index = np.zeros(n, INFO)
            index["digest"][:, :8] = np.arange(n, dtype="<u8").view(np.uint8).reshape(n, 8)
            index["width"], index["height"], index["mode"] = 32, 32, b"RGB"
            return index

        def caption_digests(self):
            digests = np.zeros((n, 16), np.uint8)
            digests[:, :8] = np.arange(n, dtype="<u8").view(np.uint8).reshape(n, 8)
            return digests

    class StandIn(torch.nn.Module):
        """The UNet's interface at almost no cost: a 1×1 convolution of x_t plus a term of the text."""

        def __init__(self, channels: int, width: int):
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, channels, 1)
            self.text = torch.nn.Linear(width, channels)

        def forward(self, x, t, encoder_hidden_states=None, **kwargs):
            from types import SimpleNamespace

            bias = self.text(encoder_hidden_states.mean(1))[:, :, None, None]
            return SimpleNamespace(sample=self.conv(x) + bias)

    model = DiffusionModel.load("default")
    meter = _PeakAnon()
    baseline = meter.now()
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_OUT_TMP")) as tmp:
        chunk = 8192
        settings = PrepareSettings(scoring=LossGrid(timesteps=timesteps, batch_size=8192, noise="shared"),
                                   chunk_rows=chunk)
        workspace = Workspace(model, Synthetic(), tmp, settings, progress=False)
        text_shape = tuple(model.encode_text(["x"]).shape[1:])
        generator = np.random.default_rng(0)
        started = time.perf_counter()
        for name, shape in (("latents", (n, *model.latent_shape)), ("text", (n, *text_shape))):
            array = workspace.store.chunked(name, shape, chunk)
            for start, stop in array.pending_chunks():
                array.write_chunk(start, stop, generator.standard_normal((stop - start, *shape[1:]), np.float32))
            array.consolidate()
        workspace.store.save_json("text_truncated", {"rows": [], "max_tokens": model.text.max_tokens})
        ingest = time.perf_counter() - started
        workspace.prepare()  # reads back the latents and text written above (nothing left to compute)
        stand_in = StandIn(model.latent_shape[0], text_shape[1])
        stand_in.config = model.unet.config  # the shapes the adapter reads
        model.unet = stand_in
        started = time.perf_counter()
        before = fit_base_losses(workspace)
        base_s = time.perf_counter() - started
        weights = {"conv.weight": model.unet.conv.weight.detach() * 1.01}
        started = time.perf_counter()
        after = workspace.losses_under(["losses_after"], [weights])[0]
        scores = loss_change_scores(before, after, workspace.caption_rows, n)
        after_s = time.perf_counter() - started
        assert scores.shape == (n,) and np.isfinite(scores).all()
        peak = meter.stop()
    unet_rows = n * timesteps * 2
    print(json.dumps({"rows": n, "unet_rows_per_pass": unet_rows, "ingest_s": round(ingest, 1),
                      "base_pass_s": round(base_s, 1), "after_pass_and_scores_s": round(after_s, 1),
                      "pipeline_rows_per_s": round(unet_rows / base_s),
                      "peak_anon_mib_above_start": round((peak - baseline) / 2**20, 1),
                      "scores_mib": round(n * 4 / 2**20, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("ranks")
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--chunk-rows", type=int, default=64)
    p = sub.add_parser("sweep")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--queries", type=int, default=4)
    p = sub.add_parser("memory")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--timesteps", type=int, default=2)
    p = sub.add_parser("memory-one")
    p.add_argument("n", type=int)
    p.add_argument("timesteps", type=int)
    args = parser.parse_args()
    if args.part == "ranks":
        ranks(args.images, args.chunk_rows)
    elif args.part == "sweep":
        sweep(args.images, args.queries)
    elif args.part == "memory":
        memory(args.sizes, args.timesteps)
    else:
        memory_one(args.n, args.timesteps)


if __name__ == "__main__":
    main()
