"""Attribution end to end on the default model and set: the demo as a user runs it, and each phase at the defaults.

    python3 -m pytest benchmarks/bench_attribution.py --benchmark-columns=mean,rounds

- demo: `python3 -m unlearn_fast demo` in a fresh process (import, load, prepare at demo settings, generate, unlearn,
  score, report): the README's first command after its installs.
- phases: Attributor.prepare() then one attribute() at the full defaults (PrepareSettings(), UnlearnSettings()), each
  phase's wall time recorded in extra_info (latents, text, fisher, base_losses, unlearn, score).
One round each: these take tens of seconds to minutes; run them on an idle machine (2 torch threads collapse when
another process shares the cores).
"""
import json
import subprocess
import sys
import time

import pytest


def test_demo_end_to_end(benchmark, tmp_path):
    def run():
        out = tmp_path / f"demo{time.perf_counter_ns()}"
        done = subprocess.run([sys.executable, "-m", "unlearn_fast", "demo", "--out", str(out), "--quiet", "--json"],
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    summary = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(phases_s=summary["timings_s"], reported_s=summary["seconds"])
    assert (tmp_path / next(p.name for p in tmp_path.iterdir()) / "report" / "report.html").exists()


@pytest.mark.parametrize("preset", ["defaults"])
def test_phases(benchmark, tmp_path, preset):
    from unlearn_fast.attributor import Attributor
    from unlearn_fast.data import open_dataset
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.query import query_from_prompt

    model = DiffusionModel.load("default")
    query = query_from_prompt(model, "red apple", seed=0)

    def run():
        attributor = Attributor(model, open_dataset("default"), tmp_path / f"w{time.perf_counter_ns()}",
                                progress=False)
        attributor.attribute([query])
        return attributor.timings

    timings = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(phases_s=timings)
