"""Progress bars under torchrun (2 ranks, gloo on the CPU): one bar per pass, on rank 0, whose total is the whole pass
(every rank's chunks) and which ends at exactly that total, never beyond it.

The real command line under torchrun (tests/distributed_worker.py) on 20 images in chunks of 4 rows: 5 chunks, dealt
3 to rank 0 and 2 to rank 1, so a bar that counted rank 0's share only, or the world size per rank-0 chunk, is caught.
"""
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses under torchrun

WORKER = str(Path(__file__).resolve().parents[1] / "distributed_worker.py")
BAR = re.compile(r"^(?P<desc>\S.*?): +(?P<percent>\d+)%\|[^|]*\| (?P<n>\d+)/(?P<total>\d+) ")


def bars(stderr: str) -> dict[str, list[tuple[int, int]]]:
    """{bar description: every (n, total) it printed, in order} from tqdm's carriage-return updates."""
    states = defaultdict(list)
    for line in re.split(r"[\r\n]", stderr):
        match = BAR.match(line.strip())
        if match:
            states[match["desc"]].append((int(match["n"]), int(match["total"])))
    return states


def test_each_pass_shows_one_bar_over_the_whole_pass_on_rank_0(tmp_path, default_image_folder):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", WORKER,
               "attribute", "--data", default_image_folder(range(360, 380)), "--work-dir", str(tmp_path / "work"),
               "--prompt", "red apple", "--seed", "1", "--sample-steps", "3", "--timesteps", "2", "--no-flips",
               "--chunk-rows", "4", "--threads", "1", "--draws", "8", "--candidates", "7", "--json"]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    shown = bars(run.stderr)
    # 20 caption rows in chunks of 4: 5 chunks; the Fisher sums blocks of 16 rows (MIN_UNET_ROWS): 2; the two-stage
    # query rescores its 7 candidates in blocks of 4: 2.
    expected = {"latents": 5, "text": 5, "fisher": 2, "losses_base": 5, "rescore candidates": 2}
    for desc, total in expected.items():
        states = shown[desc]
        assert states, f"no {desc!r} bar in:\n{run.stderr[-2000:]}"
        assert {t for _, t in states} == {total}, f"{desc}: totals {states}, the pass has {total}"
        assert all(n <= t for n, t in states) and states[-1][0] == total, f"{desc}: {states}"
        assert sum(n == 0 for n, _ in states) == 1, f"{desc}: started more than once (a bar per rank?): {states}"
