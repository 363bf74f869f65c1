"""The files an evaluation writes into its output folder: atomic, laid out as before, and the loss caches shared by
two evaluations on one folder keep both's entries. No model: the model load and the losses are stand-ins."""
import json
import multiprocessing
import os
from types import SimpleNamespace

import numpy as np
import pytest

from unlearn_fast.evaluate import counterfactual, lds
from unlearn_fast.evaluate.output_files import write_json, write_png, write_text
from unlearn_fast.models.adapter import DiffusionModel

FORK = multiprocessing.get_context("fork")
# Only a hung process is given up on, never a slow one: a loaded 2-core machine may take minutes.
HUNG_AFTER_S = 30 * 60



def test_results_are_laid_out_as_json_dump_with_indent_1_and_carry_no_sidecar(tmp_path):
    summary = {"setup": {"steps": 3, "fractions": [0.5]}, "table": [{"method": "abu", "k": 1}], "a": float("nan")}
    write_json(tmp_path / "results.json", summary)
    assert (tmp_path / "results.json").read_text() == json.dumps(summary, indent=1) + "\n"
    write_json(tmp_path / "split.json", summary, indent=None)
    assert (tmp_path / "split.json").read_text() == json.dumps(summary) + "\n"
    write_text(tmp_path / "results.md", "| method |\n")
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md", "split.json"]


def test_a_result_that_fails_to_serialise_leaves_the_old_one(tmp_path):
    write_json(tmp_path / "results.json", {"old": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "results.json", {"new": object()})
    assert json.loads((tmp_path / "results.json").read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_png_is_written_whole_and_reads_back(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write_png(tmp_path / "q0.png", image)
    assert np.array_equal(np.array(Image.open(tmp_path / "q0.png")), image)


class StandInModel:
    """What measure_model asks of a model: an image per prompt (a grey one)."""

    def generate(self, prompts, seed, steps, guidance):
        return np.full((len(prompts), 8, 8, 3), 128, np.uint8)


def measure_in_a_process(measure, folder, key, both_read):
    """One evaluation's losses under the model in `folder` for the query `key`; it computes only once the other
    evaluation has read the cache too (both then hold a cache without the other's entry)."""
    def losses(model, which):
        both_read.wait(timeout=HUNG_AFTER_S)
        return np.array([float(len(key))] * len(which))

    query = SimpleNamespace(key=key, prompt="red apple", seed=0, image=np.zeros((8, 8, 3), np.uint8))
    measure(folder, [query], losses)


def lds_measure(folder, queries, losses):
    lds.query_losses_under(folder, queries, losses, "cpu")


def counterfactual_measure(folder, queries, losses):
    counterfactual.query_losses_under(folder, queries, [0], losses, SimpleNamespace(device="cpu"))


def counterfactual_measure_and_generate(folder, queries, losses):
    setup = SimpleNamespace(device="cpu", query_steps=2, guidance=1.0)
    counterfactual.measure_model(folder, queries, [0], losses, setup)


def run_together(processes) -> list:
    """Start every process, wait for each (a hung one is killed after HUNG_AFTER_S), return their exit codes."""
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=HUNG_AFTER_S)
        if process.is_alive():
            process.kill()
    return [process.exitcode for process in processes]


@pytest.mark.parametrize("measure", [lds_measure, counterfactual_measure])
def test_two_evaluations_on_one_folder_keep_each_others_losses(tmp_path, monkeypatch, measure):
    monkeypatch.setattr(DiffusionModel, "load", staticmethod(lambda folder, device=None: StandInModel()))
    run = tmp_path / "retrains" / "key"
    run.mkdir(parents=True)
    (run / "losses.json").write_text(json.dumps({"earlier": 0.5}, indent=1))  # a cache of an earlier version
    both_read = FORK.Barrier(2)
    evaluations = [FORK.Process(target=measure_in_a_process, args=(measure, str(run / "model"), key, both_read))
                   for key in ("query-a", "query-bb")]
    assert run_together(evaluations) == [0, 0]
    assert json.loads((run / "losses.json").read_text()) == {"earlier": 0.5, "query-a": 7.0, "query-bb": 8.0}
    assert sorted(os.listdir(run)) == ["losses.json"]


def test_two_evaluations_on_one_folder_keep_each_others_measurements(tmp_path, monkeypatch):
    monkeypatch.setattr(DiffusionModel, "load", staticmethod(lambda folder, device=None: StandInModel()))
    run = tmp_path / "retrains" / "key"
    run.mkdir(parents=True)
    both_read = FORK.Barrier(2)
    evaluations = [FORK.Process(target=measure_in_a_process,
                                args=(counterfactual_measure_and_generate, str(run / "model"), key, both_read))
                   for key in ("query-a", "query-bb")]
    assert run_together(evaluations) == [0, 0]
    measured = json.loads((run / "measure.json").read_text())
    grey = (128 / 255) ** 2
    assert measured == {key: {"loss": float(len(key)), "image": f"generated-{key}.png", "mse": pytest.approx(grey)}
                        for key in ("query-a", "query-bb")}
    assert sorted(os.listdir(run)) == ["generated-query-a.png", "generated-query-bb.png", "measure.json"]
