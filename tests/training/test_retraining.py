"""Retraining jobs: the key that names each job's folder (pinned, so existing retraining caches are found), the lock
that leaves a job to the live process training it, and a finished job never trained again."""
import os
import subprocess
import sys

import pytest

from unlearn_fast.training import retraining
from unlearn_fast.training.run import TrainRequest

# These keys are what main's evaluate/retrain.job_key gave (commit f898c30, before training/ existed) for the requests
# below. They pin compatibility with existing retraining caches: a changed key would silently retrain every folder.
PINNED_KEYS = {
    "default": (dict(), "99624ed3c24a426b"),
    "leave-out": (dict(data="/data/set", vae_from="default", exclude=[9, 3, 3], out="x", command="c"),
                  "bac5f6c833cffb11"),
    "every field": (dict(data="/data/set", init_from="/m", exclude=[1], add_tokens=["<v1>"], steps=300, vae_steps=7,
                         batch_size=64, lr=2e-3, warmup_steps=30, seed=4, ema_decay=0.5, caption_dropout=0.2,
                         unet_parameters="kv", architecture="dit", train_text_encoder=False, lora_rank=4,
                         caption_column="caption"), "9ab7125befc8ea36"),
    "cuda": (dict(data="/data/set", exclude=[2, 5], device="cuda:1"), "32300c94f35c94a1"),  # not "gpu": a marker
}


@pytest.mark.parametrize("name", PINNED_KEYS)
def test_job_keys_are_the_keys_existing_retraining_caches_were_made_with(name):
    fields, key = PINNED_KEYS[name]
    assert retraining.job_key(TrainRequest(**fields)) == key


def test_the_counterfactual_judge_s_requests_keep_their_keys():
    """The requests evaluate/ builds (counterfactual, LDS and group retraining share training_request)."""
    from unlearn_fast.evaluate.counterfactual import CounterfactualSetup, training_request

    request = training_request(CounterfactualSetup(), "/data/set", exclude=[4, 1], seed=2)
    assert retraining.job_key(request) == "fe1a86559990ec43"  # main's key (f898c30), as above


def test_a_recipe_number_a_request_could_not_set_before_changes_the_key_only_off_its_old_value(tmp_path):
    """Fields added to the request since caches existed (the trainer's and the VAE's other numbers, the images'
    column, a subset) are left out of the key at the value those runs used, and change it at any other value."""
    base = TrainRequest(data="d", exclude=[1])
    for name, value in retraining.IMPLICIT.items():
        assert getattr(base, name) == value, name  # the default still trains as the cached runs did
        if value is None:  # the subset: a file naming some images (its content is what the key reads)
            (tmp_path / "some.txt").write_text("0\n")
            other = str(tmp_path / "some.txt")
        else:
            other = f"{value}-other" if isinstance(value, str) else value * 2 + 1
        changed = TrainRequest(data="d", exclude=[1], **{name: other})
        assert retraining.job_key(changed) != retraining.job_key(base), name


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


