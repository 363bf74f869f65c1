"""torchrun on the CPU (gloo): every stored artefact has the same bits for 1, 2 and 3 ranks, and a job that lost a
rank mid-pass, relaunched with another world size, computes only the missing chunks and ends with the same bits.

Each run is the real command line under torchrun (tests/distributed_worker.py), on 24 default images in chunks of 4
rows, one CPU thread per rank (the single-process reference too, so thread counts cannot differ).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unlearn_fast.store.digests import work_dir_digests

pytestmark = pytest.mark.slow  # training runs or subprocesses: the full tier, not the everyday one

WORKER = str(Path(__file__).resolve().parents[1] / "distributed_worker.py")
FAST = ["--timesteps", "2", "--no-flips", "--score-seed", "3", "--chunk-rows", "4", "--threads", "1", "--quiet"]
UNLEARN = ["--draws", "16", "--step", "alpha/N:0.003"]  # α in α/N units, as written


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, default_dataset, default_image_folder):
    root = tmp_path_factory.mktemp("distributed")
    (root / "images").symlink_to(default_image_folder(range(360, 384)))
    default_dataset.image(369).convert("RGB").resize((32, 32)).save(root / "query.png")  # 'red apple'
    return root


def attribute(inputs, work, ranks: int, env: dict | None = None, extra: tuple = ()) -> subprocess.CompletedProcess:
    """`unlearn-fast attribute` (which prepares first) with `ranks` processes; ranks = 0: plain python, no torchrun."""
    launcher = [sys.executable, WORKER] if ranks == 0 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", WORKER]
    command = [*launcher, "attribute", "--data", str(inputs / "images"), "--work-dir", str(work),
               "--image", str(inputs / "query.png"), "--prompt", "red apple", *FAST, *UNLEARN, *extra, "--json"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment)


def summary_of(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout  # one summary per job, from rank 0
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def reference(inputs):
    work = inputs / "one-process"
    summary = summary_of(attribute(inputs, work, 0))
    assert summary["world_size"] == 1
    return work, summary


def test_every_artefact_has_the_same_bits_for_one_two_and_three_ranks(inputs, reference):
    work, single = reference
    expected = work_dir_digests(work)
    assert {"latents/data.npy", "text/data.npy", "fisher.safetensors", "losses_base/data.npy"} <= set(expected)
    assert any(name.endswith("losses_after/data.npy") for name in expected)
    for ranks in (2, 3):
        summary = summary_of(attribute(inputs, inputs / f"ranks{ranks}", ranks))
        assert summary["world_size"] == ranks
        by_rank = summary["chunks_by_rank"]["losses_base"]
        assert len(by_rank) == ranks and all(by_rank)  # every rank took part, each in its own chunks
        assert sorted(k for chunks in by_rank for k in chunks) == list(range(6))  # 24 rows in chunks of 4
        assert work_dir_digests(inputs / f"ranks{ranks}") == expected, f"{ranks} ranks stored other bits"
        scores = np.load(summary["files"]["scores"])
        np.testing.assert_array_equal(scores, np.load(single["files"]["scores"]))
        log = (inputs / f"ranks{ranks}" / "log.txt").read_text()
        assert f"{ranks} ranks (torch.distributed)" in log and "losses_base: chunks by rank" in log


def test_a_job_that_lost_a_rank_resumes_only_the_missing_chunks_with_another_world_size(inputs, reference):
    work = inputs / "killed"
    killed = attribute(inputs, work, 2, {"KILL_RANK": "1", "KILL_PASS": "losses_base", "KILL_AFTER": "1"})
    assert killed.returncode != 0
    base = work / "losses_base"
    done = set(np.flatnonzero(np.load(base / "done.npy")).tolist())
    done |= {int(p.stem) for p in (base / "parts").glob("*.npy")}
    assert 1 <= len(done) < 6, "the kill should leave the pass part done"
    assert not (work / "queries").exists() or not list(work.glob("queries/*/scores.npy"))

    summary = summary_of(attribute(inputs, work, 3))
    computed = [k for chunks in summary["chunks_by_rank"]["losses_base"] for k in chunks]
    assert sorted(computed) == sorted(set(range(6)) - done)  # only the missing chunks, none twice
    assert "latents" not in summary["chunks_by_rank"]  # complete before the kill: not recomputed
    assert work_dir_digests(work) == work_dir_digests(reference[0])


def test_the_two_stage_query_has_the_same_bits_on_two_ranks(inputs, reference):
    """Stage 1's features (a chunked pass split over the ranks) and the candidates' rescoring (blocks shared, gathered
    in order) give the single process's bits."""
    runs = {ranks: summary_of(attribute(inputs, inputs / f"two-stage{ranks}", ranks, extra=("--candidates", "50%")))
            for ranks in (0, 2)}
    single, double = (np.load(runs[r]["files"]["scores"]) for r in (0, 2))
    np.testing.assert_array_equal(double, single)
    one, two = (work_dir_digests(inputs / f"two-stage{r}") for r in (0, 2))
    features = [name for name in one if name.startswith("linear/") and name.endswith("data.npy")]
    assert features and all(one[name] == two[name] for name in features)
    record = json.loads((Path(runs[2]["files"]["scores"]).parent / "attribution.json").read_text())
    assert "12 of 24" in json.dumps(record)
