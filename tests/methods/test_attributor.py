"""Attribution end to end on 40 default images with the shipped model: invariance, resume, bad input, outputs."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast import workspace as workspace_module
from unlearn_fast.methods.abu import artefacts as abu_artefacts
from unlearn_fast.attributor import Attributor, PrepareSettings
from unlearn_fast.data import SubsetDataset, export_imagefolder, open_dataset
from unlearn_fast.engine.fisher import FisherSettings
from unlearn_fast.query import QueryError, query_from_array, query_from_file
from unlearn_fast.score_rules import loss_change_scores
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.store import StoreMismatchError
from unlearn_fast.engine.unlearn import UnlearnSettings

UNLEARN = UnlearnSettings(step=AlphaOverN(1e-4), steps=2, draws=24, batch_size=24)


def settings(batch: int = 64, chunk_rows: int = 16) -> PrepareSettings:
    return PrepareSettings(scoring=LossGrid(timesteps=3, flips=True, batch_size=batch, seed=5),
                           fisher=FisherSettings(batch_size=batch, seed=5), chunk_rows=chunk_rows)


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory, default_dataset):
    """40 default images as an image folder (a set that can be reopened from its path, as the report verb does)."""
    folder = tmp_path_factory.mktemp("data40")
    export_imagefolder(SubsetDataset(default_dataset, range(360, 400)), str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def query(red_apple_query):
    """The training image at default index 369 ('red apple', index 9 of the subset) used as the query image."""
    return red_apple_query


@pytest.fixture(scope="module")
def reference(model, data_folder, query, tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    return Attributor(model, open_dataset(data_folder), work, settings(), progress=False).attribute([query], UNLEARN)


@pytest.mark.slow
def test_scores_do_not_depend_on_batch_sizes_or_runs(model, data_folder, query, reference, tmp_path):
    scores = reference.scores[0]
    assert scores.shape == (40,) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    for batch in (1, 7, 64):
        unlearn = UnlearnSettings(**{**vars(UNLEARN), "batch_size": batch})
        again = Attributor(model, open_dataset(data_folder), tmp_path / f"b{batch}", settings(batch),
                           progress=False).attribute([query], unlearn).scores[0]
        assert np.abs(again - scores).max() <= 1e-6 * np.abs(scores).max(), batch  # bit-identical here
        assert list(np.argsort(-again)[:10]) == list(np.argsort(-scores)[:10]), batch


def test_query_image_ranks_its_own_training_copy_first(reference):
    """The query IS training image 9: unlearning it must raise that image's loss the most."""
    assert reference.order(0)[0] == 9


@pytest.mark.parametrize("kill_at, resumed_calls", [(3, 1 + 3), (5, 2)], ids=["base pass", "pass after"])
def test_killed_pass_resumes_to_the_same_scores(model, data_folder, query, reference, tmp_path, monkeypatch,
                                                kill_at, resumed_calls):
    """Each pass has 3 chunks (16 + 16 + 8 rows): call 3 is the base pass's last chunk, call 5 the second chunk of
    the pass after unlearning. A resumed run computes only the missing chunks and ends with the same scores."""
    real, calls, armed = workspace_module.losses_under_weights, [], [True]

    def dies(*args, **kwargs):
        calls.append(len(args[1]))
        if armed[0] and len(calls) == kill_at:
            raise KeyboardInterrupt("injected kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(workspace_module, "losses_under_weights", dies)
    with pytest.raises(KeyboardInterrupt):
        Attributor(model, open_dataset(data_folder), tmp_path, settings(), progress=False).attribute([query], UNLEARN)
    calls.clear()
    armed[0] = False
    resumed = Attributor(model, open_dataset(data_folder), tmp_path, settings(batch=7), progress=False).attribute(
        [query], UNLEARN)
    assert len(calls) == resumed_calls
    np.testing.assert_array_equal(resumed.scores, reference.scores)


def test_killed_fisher_resumes_to_the_same_scores(model, data_folder, query, reference, tmp_path, monkeypatch):
    """The Fisher is summed in chunks of 16 rows (3 for 40 images), each stored: a resumed run computes the rest."""
    real, calls, armed = abu_artefacts.fisher_sums, [], [True]

    def dies(*args, **kwargs):
        calls.append(len(args[2]))
        if armed[0] and len(calls) == 2:
            raise KeyboardInterrupt("injected kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(abu_artefacts, "fisher_sums", dies)
    with pytest.raises(KeyboardInterrupt):
        Attributor(model, open_dataset(data_folder), tmp_path, settings(), progress=False).attribute([query], UNLEARN)
    assert len([p for p in (tmp_path / "fisher_parts").iterdir() if p.suffix != ".sum"]) == 1
    calls.clear()
    armed[0] = False
    resumed = Attributor(model, open_dataset(data_folder), tmp_path, settings(), progress=False).attribute(
        [query], UNLEARN)
    assert calls == [16, 8] and not (tmp_path / "fisher_parts").exists()
    np.testing.assert_array_equal(resumed.scores, reference.scores)


def test_work_dir_of_another_model_is_refused_and_kept(model, data_folder, query, reference):
    import copy

    other = copy.copy(model)
    other.unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    work = reference.work_dir
    before = {p.name: p.stat().st_mtime_ns for p in Path(work).rglob("*") if p.is_file()}
    with pytest.raises(StoreMismatchError, match="model.unet: was"):
        Attributor(other, open_dataset(data_folder), work, progress=False)
    with pytest.raises(StoreMismatchError, match="setting 'scoring'"):
        Attributor(model, open_dataset(data_folder), work, PrepareSettings(scoring=LossGrid(timesteps=4)), progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in Path(work).rglob("*") if p.is_file()}
    assert after == before  # nothing finished was touched


def test_nan_after_unlearning_names_the_step_and_keeps_prepared_work(model, data_folder, query, reference):
    work = Attributor(model, open_dataset(data_folder), reference.work_dir, progress=False)
    with pytest.raises(FloatingPointError, match=r"smaller step \(now --step alpha/N:1e\+40\)"):
        work.attribute([query], UnlearnSettings(step=AlphaOverN(1e40), steps=1, draws=8))
    np.testing.assert_array_equal(work.base_losses, np.load(f"{reference.work_dir}/losses_base/data.npy"))
    again = work.attribute([query], UNLEARN)  # the earlier query's results are still there and still the same
    np.testing.assert_array_equal(again.scores, reference.scores)


def test_query_of_wrong_size_or_mode_is_refused(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    Image.new("RGBA", (32, 32)).save(tmp_path / "alpha.png")
    with pytest.raises(QueryError, match=r"big.png is 64×64; the model takes 32×32"):
        query_from_file(str(tmp_path / "big.png"), "red apple", 32)
    with pytest.raises(QueryError, match=r"alpha.png has colour mode RGBA"):
        query_from_file(str(tmp_path / "alpha.png"), "red apple", 32)
    with pytest.raises(QueryError, match="needs the prompt"):
        query_from_file(str(tmp_path / "alpha.png"), " ", 32)
    with pytest.raises(QueryError, match=r"uint8 \(32, 32, 3\), got float64"):
        query_from_array(np.zeros((32, 32, 3)), "red apple", 32)


def test_outputs(reference, tmp_path):
    paths = reference.save(str(tmp_path), top_k=5)
    scores = np.load(paths["scores"])
    assert scores.shape == (1, 40) and scores.dtype == np.float32
    table = pq.read_table(paths["ranking_parquet"])
    rows = table.to_pydict()
    assert rows["rank"] == list(range(1, 41))
    assert sorted(rows["index"]) == list(range(40))
    assert all(a >= b for a, b in zip(rows["score"], rows["score"][1:]))
    assert np.allclose(rows["score"], scores[0, rows["index"]])
    dataset = reference.dataset
    assert rows["file"][0] == dataset.key(rows["index"][0]) and rows["caption"][0] == dataset.captions(rows["index"][0])[0]
    csv_lines = open(paths["ranking_csv"], encoding="utf-8").read().splitlines()
    assert csv_lines[0] == "query,prompt,rank,index,file,caption,score" and len(csv_lines) == 41
    assert Image.open(paths["contact_sheet"]).size[0] > 5 * 96
    html = open(paths["report"], encoding="utf-8").read()
    assert html.count("<figure>") == 5 and "red apple" in html
    record = json.load(open(tmp_path / "attribution.json"))
    assert record["queries"][0]["unlearn"]["step"] == str(UNLEARN.step) == "alpha/N:0.0001"


def test_report_reloads_from_its_folder(reference, tmp_path):
    from unlearn_fast.attribution import Attribution

    reference.save(str(tmp_path), top_k=3)
    again = Attribution.load(str(tmp_path))
    np.testing.assert_array_equal(again.scores, reference.scores)
    assert again.top(0, 3) == reference.top(0, 3)
    np.testing.assert_array_equal(again.queries[0].image, reference.queries[0].image)


def test_scores_average_captions_and_timesteps_then_take_the_larger_flip():
    rng = np.random.default_rng(0)
    before = rng.random((5, 3, 2)).astype(np.float32)
    after = before + rng.random((5, 3, 2)).astype(np.float32) - 0.5
    rows = np.array([0, 0, 1, 2, 2])  # examples 0 and 2 have two captions each; example 3 has none
    scores = loss_change_scores(before, after, rows, 4)
    change = after.astype(np.float64) - before
    expected0 = max(change[0:2, :, f].mean() for f in range(2))
    expected1 = max(change[2, :, f].mean() for f in range(2))
    assert scores[0] == pytest.approx(expected0, rel=1e-6) and scores[1] == pytest.approx(expected1, rel=1e-6)
    assert np.isnan(scores[3])


def test_an_image_with_two_captions_is_scored_by_their_average(model, default_dataset, query, tmp_path):
    """Image 3 of this set has two captions: two caption rows (own text, the image's noise), τ averaged over them."""
    folder = tmp_path / "data"
    export_imagefolder(SubsetDataset(default_dataset, range(360, 376)), str(folder))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[3]["text"] = [rows[3]["text"], "tomato"]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    attributor = Attributor(model, open_dataset(str(folder)), tmp_path / "work", settings(), progress=False)
    attribution = attributor.attribute([query], UNLEARN)
    assert attributor.caption_rows.tolist() == [0, 1, 2, 3, 3] + list(range(4, 16))
    before = attributor.base_losses
    after = np.load(tmp_path / "work" / attribution.records[0]["folder"] / "losses_after" / "data.npy")
    assert not np.array_equal(before[3], before[4])  # each caption row has its own conditioning
    change = (after.astype(np.float64) - before).mean(axis=1)  # (rows, flips)
    assert attribution.scores[0, 3] == pytest.approx(change[3:5].mean(axis=0).max(), rel=1e-6)
    assert attribution.scores[0, 4] == pytest.approx(change[5].max(), rel=1e-6)


def test_the_work_dirs_fisher_reads_back_with_load_fisher(model, reference):
    from unlearn_fast.engine.fisher import load_fisher

    fisher, fisher_settings, meta = load_fisher(f"{reference.work_dir}/fisher.safetensors")
    assert fisher_settings.seed == 5 and meta["group"] == "kv" and meta["rows"] == 40
    assert set(fisher) == set(model.parameter_group("kv")) and all(v.dtype == torch.float32 for v in fisher.values())


def test_a_channels_last_engine_gives_the_same_ranking_and_leaves_the_model_as_it_was(model, data_folder, query,
                                                                                       reference, tmp_path):
    """The after-unlearning pass scores by swapping the unlearned K/V into model.unet (weight_swap): the engine's
    plan must not change the ranking, and the model must come back with its own weights."""
    import copy
    import dataclasses

    nhwc = copy.deepcopy(model)  # channels_last changes the UNet's strides in place
    fingerprint = nhwc.fingerprint()
    plan = dataclasses.replace(settings(), scoring=dataclasses.replace(settings().scoring, channels_last=True))
    scores = Attributor(nhwc, open_dataset(data_folder), tmp_path, plan, progress=False).attribute([query], UNLEARN)
    assert nhwc.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.fingerprint() == fingerprint
    want = reference.scores[0]
    assert np.abs(scores.scores[0] - want).max() <= 1e-3 * np.abs(want).max()
    assert list(np.argsort(-scores.scores[0])[:10]) == list(np.argsort(-want)[:10])


@pytest.mark.gpu
@pytest.mark.parametrize("compile_mode", ["none", "reduce-overhead"])
def test_the_gpu_attributor_ranks_as_the_cpu_one(model, data_folder, query, reference, tmp_path, compile_mode):
    """The whole pipeline on the GPU (rows moved a batch at a time, Fisher sums brought back to the CPU, unlearned
    weights swapped in), fp32 with TF32 off: the CPU's top 10 in the CPU's order."""
    import copy
    import dataclasses

    on_gpu = copy.deepcopy(model).to("cuda")
    plan = dataclasses.replace(settings(), scoring=dataclasses.replace(settings().scoring, compile=compile_mode))
    scores = Attributor(on_gpu, open_dataset(data_folder), tmp_path, plan, progress=False).attribute([query], UNLEARN)
    want = reference.scores[0]
    assert np.abs(scores.scores[0] - want).max() <= 1e-2 * np.abs(want).max()
    assert list(np.argsort(-scores.scores[0])[:10]) == list(np.argsort(-want)[:10])


def test_unlearning_and_query_generation_show_progress(model, data_folder, query, tmp_path, capfd):
    from unlearn_fast.query import query_from_prompt

    attributor = Attributor(model, open_dataset(data_folder), tmp_path / "work", settings(), progress=True)
    attributor.prepare()
    capfd.readouterr()
    attributor.attribute([query], UnlearnSettings(step=AlphaOverN(1e-4), steps=2, draws=8, batch_size=4))
    err = capfd.readouterr().err
    assert f"unlearn {query.key[:8]}" in err and "16/16" in err and "draw/s" in err
    query_from_prompt(model, "red apple", steps=3, progress=True)
    assert "generate" in capfd.readouterr().err
    query_from_prompt(model, "red apple", steps=3)  # quiet unless asked
    assert "generate" not in capfd.readouterr().err
    quiet = Attributor(model, open_dataset(data_folder), tmp_path / "quiet", settings(), progress=False)
    capfd.readouterr()
    quiet.attribute([query], UnlearnSettings(step=AlphaOverN(1e-4), steps=1, draws=8, batch_size=4))
    assert "unlearn" not in capfd.readouterr().err
