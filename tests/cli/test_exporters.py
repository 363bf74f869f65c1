"""Scores exported for dattri and TRAK: the transpose, value for value, read back the way those tools read them."""
import json

import numpy as np
import pytest
import torch

from unlearn_fast.cli import main
from unlearn_fast.interop.exporters import ExportError, export_dattri, export_scores, export_trak


def scores(queries=3, train=11, seed=0):
    return np.random.default_rng(seed).standard_normal((queries, train)).astype(np.float32)


def test_dattri_export_is_the_train_by_test_tensor(tmp_path):
    ours = scores()
    path = export_dattri(ours, str(tmp_path / "scores.pt"))
    theirs = torch.load(path)
    assert theirs.shape == (11, 3) and theirs.dtype == torch.float32
    assert np.array_equal(theirs.numpy(), ours.T)  # train j, test q = our (q, j)
    with pytest.raises(ExportError, match="exists; pass overwrite"):
        export_dattri(scores(seed=1), path)
    assert np.array_equal(torch.load(path).numpy(), ours.T)  # the refused export changed nothing
    export_dattri(scores(seed=1), path, overwrite=True)
    assert np.array_equal(torch.load(path).numpy(), scores(seed=1).T)


def test_trak_export_adds_an_experiment_and_keeps_the_others(tmp_path):
    save_dir = tmp_path / "trak_results"
    first, second = scores(2, 11, seed=2), scores(4, 11, seed=3)
    export_trak(first, str(save_dir), "abu_first")
    export_trak(second, str(save_dir), "abu_second")
    listing = json.loads((save_dir / "experiments.json").read_text())
    assert set(listing) == {"abu_first", "abu_second"}
    for name, ours in (("abu_first", first), ("abu_second", second)):
        entry = listing[name]
        assert entry["num_targets"] == len(ours) and entry["scores_finalized"] == 1
        theirs = np.load(entry["scores_path"], mmap_mode="r")  # an .npy-format memmap, as open_memmap writes
        assert theirs.shape == (11, len(ours)) and theirs.dtype == np.float32
        assert np.array_equal(theirs, ours.T)
    with pytest.raises(ExportError, match="already has TRAK experiment 'abu_first'"):
        export_trak(second, str(save_dir), "abu_first")
    assert np.array_equal(np.load(listing["abu_first"]["scores_path"]), first.T)
    assert not list(save_dir.rglob("*.partial"))


def test_bad_exports_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ExportError, match=r"num_queries, num_train\), got int64 \(3,\)"):
        export_scores(np.arange(3), "dattri", str(tmp_path / "x.pt"))
    with pytest.raises(ExportError, match="format 'kronfluence'"):
        export_scores(scores(), "kronfluence", str(tmp_path / "x"))
    with pytest.raises(ExportError, match="plain file name"):
        export_trak(scores(), str(tmp_path / "t"), "../escape")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "experiments.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        export_trak(scores(), str(broken), "x")
    assert (broken / "experiments.json").read_text() == "{not json"


def test_the_cli_exports_an_attribution_folder(tmp_path, capsys):
    folder = tmp_path / "attribution"
    folder.mkdir()
    ours = scores(2, 7)
    np.save(folder / "scores.npy", ours)
    main(["export-scores", str(folder), "--format", "trak", "--out", str(tmp_path / "trak"), "--experiment", "q"])
    out = json.loads(capsys.readouterr().out)["out"]
    assert np.array_equal(np.load(out), ours.T)
    main(["export-scores", str(folder / "scores.npy"), "--format", "dattri", "--out", str(tmp_path / "s.pt")])
    assert np.array_equal(torch.load(tmp_path / "s.pt").numpy(), ours.T)
    with pytest.raises(SystemExit, match=r"unlearn-fast export-scores: .*missing: no such file"):
        main(["export-scores", str(tmp_path / "missing"), "--format", "dattri", "--out", str(tmp_path / "m.pt")])
