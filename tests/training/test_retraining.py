"""Retraining jobs: the key that names each job's folder, the lock that leaves a job to the live process training it,
and a finished job never trained again."""
import os
import subprocess
import sys

import pytest

from unlearn_fast.training import retraining
from unlearn_fast.training.run import TrainRequest


def test_job_key_is_the_recipe_and_the_removed_set():
    key = retraining.job_key
    a = TrainRequest(data="d", exclude=[5, 2, 2], out="x", command="one")
    assert key(a) == key(TrainRequest(data="d", exclude=[2, 5], out="y", command="two"))
    assert key(a) != key(TrainRequest(data="d", exclude=[2, 6]))
    assert key(a) != key(TrainRequest(data="d", exclude=[2, 5], seed=1))
    on_gpu = TrainRequest(data="d", exclude=[2, 5], device="cuda")
    assert key(a) != key(on_gpu)  # a GPU run is another run (float rounding differs)
    assert key(a) == key(TrainRequest(data="d", exclude=[2, 5], new_token_rows=3))  # a run derives it: unused


@pytest.mark.slow  # a subprocess
def test_a_job_locked_by_a_live_process_is_left_to_it(tmp_path):
    """run_job takes each job's lock with store.FileLock (tests/store/test_lock.py): held elsewhere, the job is 'busy'."""
    request = TrainRequest(data="d", exclude=[1])
    os.makedirs(os.path.join(str(tmp_path), retraining.job_key(request)))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom unlearn_fast.store import FileLock\n"
                               "assert FileLock(sys.argv[1]).try_acquire()\nprint('held', flush=True)\ntime.sleep(30)",
                               os.path.join(str(tmp_path), retraining.job_key(request)) + ".lock"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert retraining.run_job(str(tmp_path), request) == "busy"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_finished_run_is_not_trained_again(tmp_path, monkeypatch):
    request = TrainRequest(data="d", exclude=[1])
    folder = retraining.model_folder(str(tmp_path), request)
    os.makedirs(folder)
    with open(os.path.join(folder, "training.json"), "w") as handle:
        handle.write("{}")
    monkeypatch.setattr(retraining, "run_training", lambda *a, **k: pytest.fail("trained a finished run"))
    assert retraining.run_job(str(tmp_path), request) == "done"
    assert retraining.run_jobs(str(tmp_path), [request, request], workers=2) == {
        retraining.job_key(request): "done"}


