"""No silent wrong answers (issue 11), as a user meets them on the command line with the shipped model: a work
directory bound to the content of its inputs, one output folder per query, settings checked before any work, one-line
errors naming the culprit, input changes stated. Each case also checks that nothing finished was lost."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.cli import main
from unlearn_fast.data import SubsetDataset, export_imagefolder

FAST = ["--timesteps", "2", "--no-flips", "--score-seed", "3", "--quiet"]
UNLEARN = ["--draws", "8", "--step", "alpha/N:0.001", "--sample-steps", "2"]  # α in α/N units


@pytest.fixture(scope="module")
def images(tmp_path_factory, default_dataset):
    root = tmp_path_factory.mktemp("images16")
    export_imagefolder(SubsetDataset(default_dataset, range(360, 376)), str(root))
    return str(root)


@pytest.fixture(scope="module")
def prepared(images, tmp_path_factory):
    """A prepared work directory (copied by tests that change it)."""
    work = tmp_path_factory.mktemp("prepared") / "work"
    main(["prepare", "--data", images, "--work-dir", str(work), *FAST])
    return work


def copy_of(tmp_path, source, name):
    target = tmp_path / name
    shutil.copytree(source, target, symlinks=True)
    return target


def state(folder: Path) -> dict:
    """Every file under `folder` (bookkeeping of the lock and log aside) with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("log.txt",)}


def one_line_error(capsys, argv) -> str:
    """Run the command, expect it to stop with a message of one line (no traceback), and return that line."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = stop.value.code if isinstance(stop.value.code, str) else capsys.readouterr().err.strip()
    assert stop.value.code != 0 and "\n" not in message.strip() and "Traceback" not in message, message
    return message


# ------------------------------------------------------------------------------------------- 1. content binding

def test_a_changed_pixel_is_detected_and_overwrite_recomputes_only_what_it_invalidates(images, prepared, tmp_path,
                                                                                        capsys):
    data = copy_of(tmp_path, images, "data")
    work = copy_of(tmp_path, prepared, "work")
    main(["attribute", "--data", str(data), "--work-dir", str(work), "--prompt", "red apple", *UNLEARN, *FAST])
    capsys.readouterr()
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    target = data / rows[6]["file_name"]
    pixels = np.array(Image.open(target).convert("RGB"))
    pixels[10, 10] = 255 - pixels[10, 10]
    stat = os.stat(target)
    Image.fromarray(pixels).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the content, not the time, tells
    before = state(work)

    with pytest.raises(SystemExit) as stop:
        main(["prepare", "--data", str(data), "--work-dir", str(work), *FAST])
    message = str(stop.value.code)
    assert f"1 of 16 rows differ, the first at {rows[6]['file_name']} ({data / 'metadata.jsonl'} line 7)" in message
    assert "--overwrite deletes attributions/, fisher.safetensors, latents/, losses_base/, queries/" in message
    assert state(work) == before  # refused: nothing touched

    main(["prepare", "--data", str(data), "--work-dir", str(work), "--overwrite", *FAST])
    after = state(work)
    kept = [name for name in before if name.startswith(("text/", "caption_rows"))]
    assert kept and all(after[name] == before[name] for name in kept)  # captions did not change: text kept
    old = np.load(prepared / "latents" / "data.npy")
    new = np.load(work / "latents" / "data.npy")
    assert [i for i in range(16) if not np.array_equal(old[i], new[i])] == [6]  # re-encoded, only that image differs
    assert not (work / "queries").exists() and not (work / "attributions").exists()


def test_overwrite_with_matching_inputs_deletes_nothing(images, prepared, tmp_path, capsys):
    work = copy_of(tmp_path, prepared, "work")
    main(["attribute", "--data", images, "--work-dir", str(work), "--prompt", "red apple", *UNLEARN, *FAST])
    before = state(work)
    main(["prepare", "--data", images, "--work-dir", str(work), "--overwrite", *FAST])
    assert state(work) == before


# ---------------------------------------------------------------------------------- 2. one output per query, lock

@pytest.mark.slow
def test_two_concurrent_queries_keep_both_outputs(images, prepared, tmp_path):
    work = copy_of(tmp_path, prepared, "work")
    command = [sys.executable, "-m", "unlearn_fast", "attribute", "--data", images, "--work-dir", str(work), *UNLEARN,
               *FAST, "--json"]
    runs = [subprocess.Popen(command + ["--prompt", prompt], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            for prompt in ("red apple", "green apple")]
    summaries = []
    for run in runs:
        out, err = run.communicate()
        assert run.returncode == 0, err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    folders = [Path(s["files"]["report"]).parent for s in summaries]
    assert folders[0] != folders[1] and all(f.parent == work / "attributions" for f in folders)
    for folder, prompt in zip(folders, ("red apple", "green apple")):
        record = json.loads((folder / "attribution.json").read_text())
        assert [q["prompt"] for q in record["queries"]] == [prompt]
        assert np.load(folder / "scores.npy").shape == (1, 16)
    index = json.loads((work / "attributions" / "index.json").read_text())
    assert sorted(e["prompts"][0] for e in index["outputs"]) == ["green apple", "red apple"]
    assert (work / "attributions" / "latest").resolve() in [f.resolve() for f in folders]
    assert (work / "attributions" / "latest").resolve().name == index["latest"]
    assert not (work / ".lock").exists()


def test_a_rewritten_report_leaves_no_stale_files(images, prepared, tmp_path, capsys):
    work = copy_of(tmp_path, prepared, "work")
    main(["attribute", "--data", images, "--work-dir", str(work), "--prompt", "red apple", *UNLEARN, *FAST,
          "--top-k", "8", "--json"])
    folder = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"]["report"]).parent
    assert len([p for p in (folder / "images").iterdir() if p.is_file()]) == 9  # the query and 8 training images (full sizes in images/full)
    main(["report", str(work / "attributions" / "latest"), "--top-k", "3"])  # through the link, into its folder
    assert len([p for p in (folder / "images").iterdir() if p.is_file()]) == 4
    assert (work / "attributions" / "latest").is_symlink() and (work / "attributions" / "latest").resolve() == folder
    assert not list(folder.parent.glob("*.partial-*")) and not list(folder.parent.glob("*.old-*"))


# -------------------------------------------------------------------------------- 3. settings checked before work

@pytest.mark.parametrize("bad, culprit", [
    (["--timesteps", "0"], "argument --timesteps: expected an integer >= 1, got '0'"),
    (["--fisher-examples", "-5"], "argument --fisher-examples: expected an integer >= 0, got '-5'"),
    (["--threads", "-2"], "argument --threads: expected an integer >= 0, got '-2'"),
    (["--damping", "nan"], "argument --damping: expected a finite number >= 0, got 'nan'"),
    (["--fisher-group", "no_such_layer"], "parameter group 'no_such_layer' matches no unet denoiser parameter"),
])
def test_a_bad_setting_records_nothing_and_the_corrected_command_runs(images, tmp_path, capsys, bad, culprit):
    work = tmp_path / "work"
    assert culprit in one_line_error(capsys, ["prepare", "--data", images, "--work-dir", str(work), *FAST, *bad])
    assert not (work / "manifest.json").exists() and not (work / "latents").exists()
    main(["prepare", "--data", images, "--work-dir", str(work), *FAST])  # no --overwrite needed
    assert (work / "manifest.json").exists()


def test_the_api_checks_settings_against_the_model_before_recording(images, tmp_path):
    from unlearn_fast.attributor import Attributor, PrepareSettings
    from unlearn_fast.data import open_dataset
    from unlearn_fast.errors import SettingsError
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.engine.loss_grid import LossGrid

    model = DiffusionModel.load("default")
    for bad, message in [(PrepareSettings(scoring=LossGrid(timesteps=0)), r"timestep count must be in \[1, 1000\]"),
                         (PrepareSettings(scoring=LossGrid(timesteps=(5, 1000))), r"in \[0, 1000\)"),
                         (PrepareSettings(fisher_examples=-5), "fisher_examples must be"),
                         (PrepareSettings(preprocess="stretch"), "preprocess must be one of")]:
        with pytest.raises(SettingsError, match=message):
            Attributor(model, open_dataset(images), tmp_path / "work", bad, progress=False)
        assert not (tmp_path / "work" / "manifest.json").exists()


@pytest.mark.parametrize("bad, culprit", [
    (["--top-k", "-5"], "argument --top-k: expected an integer >= 1, got '-5'"),
    (["--step", "fixed:0"], "argument --step: the fixed step rule's size must be a finite number > 0, got 0.0"),
    (["--step", "alpha/N:-0.1"], "argument --step: the alpha/N step rule's alpha must be a finite number > 0"),
    (["--step", "rise:nan"], "argument --step: the rise step rule's factor must be a finite number > 0, got nan"),
    (["--step", "newton"], "argument --step: expected RULE[:VALUE] with RULE one of fixed, alpha/N, rise"),
    (["--alpha", "0.1"], "--alpha is gone: give --step RULE:VALUE"),
    (["--draws", "0"], "argument --draws: expected an integer >= 1, got '0'"),
    (["--group", "attention"], "the Fisher lacks"),
    (["--out", "OTHER"], "holds other files (notes.txt) and no attribution.json"),
])
def test_a_bad_query_setting_stops_before_any_work(images, prepared, tmp_path, capsys, bad, culprit):
    work = copy_of(tmp_path, prepared, "work")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    bad = [str(other) if part == "OTHER" else part for part in bad]
    before = state(work)
    message = one_line_error(capsys, ["attribute", "--data", images, "--work-dir", str(work), "--prompt", "red apple",
                                      *UNLEARN, *FAST, *bad])
    assert culprit in message
    assert state(work) == before and not (work / "queries").exists()  # no unlearning, no partial output
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_unlearning_settings_are_checked_in_the_api_too():
    from unlearn_fast.errors import SettingsError
    from unlearn_fast.engine.unlearn import UnlearnSettings

    for alpha in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(SettingsError, match="alpha must be a finite number > 0"):
            UnlearnSettings(step=AlphaOverN(alpha))
    with pytest.raises(SettingsError, match="step: expected a number after fixed:"):
        UnlearnSettings(step="fixed:large")


# ------------------------------------------------------------------------------------- 4. one-line errors

def model_copy(tmp_path) -> Path:
    from unlearn_fast.models.folder import DEFAULT_MODEL

    return Path(shutil.copytree(DEFAULT_MODEL, tmp_path / "model"))


def test_a_broken_model_index_is_one_line_naming_file_and_line(tmp_path, capsys):
    model = model_copy(tmp_path)
    (model / "model_index.json").write_text('{\n  "unet": ["diffusers", "UNet2DConditionModel"],\n  oops\n}')
    message = one_line_error(capsys, ["generate", "x", "--model", str(model), "--out", str(tmp_path / "x.png")])
    assert f"{model / 'model_index.json'} line 3 column 3: not valid JSON" in message


def test_a_unet_config_that_does_not_match_its_weights_is_one_line(tmp_path, capsys):
    model = model_copy(tmp_path)
    config = json.loads((model / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 96
    (model / "unet" / "config.json").write_text(json.dumps(config))
    message = one_line_error(capsys, ["generate", "x", "--model", str(model), "--out", str(tmp_path / "x.png")])
    assert f"{model / 'unet'}: cannot load it (RuntimeError: Error(s) in loading state_dict" in message
    assert "size mismatch" in message


def test_a_pipeline_folder_without_transformers_says_which_extra_to_install(tmp_path, capsys, monkeypatch):
    model = model_copy(tmp_path)
    index = json.loads((model / "model_index.json").read_text())
    index["text_encoder"], index["tokenizer"] = ["transformers", "CLIPTextModel"], ["transformers", "CLIPTokenizer"]
    (model / "model_index.json").write_text(json.dumps(index))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    message = one_line_error(capsys, ["generate", "x", "--model", str(model), "--out", str(tmp_path / "x.png")])
    assert "transformers is not installed: pip install 'unlearn_fast[pipelines]'" in message


def test_report_on_a_missing_folder_is_one_line(tmp_path, capsys):
    message = one_line_error(capsys, ["report", str(tmp_path / "nowhere")])
    assert f"{tmp_path / 'nowhere'}: no such folder" in message


# ------------------------------------------------------------------------------ 5. changes of input are stated

def test_converted_and_resized_training_images_are_counted_or_refused(tmp_path, default_dataset):
    from unlearn_fast.attributor import Attributor, PrepareSettings
    from unlearn_fast.data import DataError, open_dataset
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.engine.loss_grid import LossGrid

    root = tmp_path / "mixed"
    export_imagefolder(SubsetDataset(default_dataset, range(360, 366)), str(root))
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    rgb = [Image.open(root / r["file_name"]).convert("RGB") for r in rows]
    rgb[1].convert("RGBA").save(root / rows[1]["file_name"])
    rgb[2].convert("L").save(root / rows[2]["file_name"])
    rgb[4].resize((48, 40)).save(root / rows[4]["file_name"])
    model = DiffusionModel.load("default")
    small = PrepareSettings(scoring=LossGrid(timesteps=1, flips=False))

    with pytest.raises(DataError, match=rf"{rows[1]['file_name']} \({root / 'metadata.jsonl'} line 2\): 32×32 RGBA, "
                                        r"the model takes RGB 32×32 \(preprocess 'refuse'; 3 of 6 images"):
        Attributor(model, open_dataset(str(root)), tmp_path / "refused", PrepareSettings(preprocess="refuse"),
                   progress=False)
    assert not (tmp_path / "refused" / "manifest.json").exists()

    Attributor(model, open_dataset(str(root)), tmp_path / "work", small, progress=False).prepare()
    log = (tmp_path / "work" / "log.txt").read_text()
    assert ("training images: 3 of 6 changed to fit the model (RGB (transparency composited on white), shorter side "
            "resized to 32 px (bilinear), centre crop to 32×32") in log
    assert f"1 mode RGBA, 1 mode L, 1 size 48×40 (first: {rows[1]['file_name']}" in log


def test_prompts_longer_than_the_text_encoder_reads_are_warned_about(images, tmp_path, default_dataset):
    from unlearn_fast.attributor import Attributor, PrepareSettings
    from unlearn_fast.data import open_dataset
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.query import query_from_array
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.engine.unlearn import UnlearnSettings

    root = tmp_path / "long"
    shutil.copytree(images, root)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    rows[3]["text"] = " ".join(["red apple"] * 12)  # 24 words: the default encoder reads 14 + <bos>, <eos>
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = DiffusionModel.load("default")
    attributor = Attributor(model, open_dataset(str(root)), tmp_path / "work",
                            PrepareSettings(scoring=LossGrid(timesteps=1, flips=False)), progress=False)
    pixels = np.array(Image.open(root / rows[0]["file_name"]).convert("RGB"))
    attributor.attribute([query_from_array(pixels, " ".join(["cat face"] * 9), 32)],
                         UnlearnSettings(step=AlphaOverN(1e-3), draws=4))
    log = (tmp_path / "work" / "log.txt").read_text()
    assert (f"warning: 1 of 16 captions are longer than the text encoder's 16 tokens and are cut to it (first: "
            f"{rows[3]['file_name']} ({root / 'metadata.jsonl'} line 4)") in log
    assert "warning: the query prompt 'cat face cat face" in log and "is longer than the text encoder's 16 tokens" in log


def test_a_command_whose_folder_was_rebound_meanwhile_stops_before_writing(images, tmp_path):
    """Command A binds; command B then --overwrites the folder with other settings; A must not write its artefacts
    into a folder now bound to B's inputs."""
    from unlearn_fast.attributor import Attributor, PrepareSettings
    from unlearn_fast.data import open_dataset
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.store import StoreMismatchError

    model = DiffusionModel.load("default")
    work = tmp_path / "work"
    first = Attributor(model, open_dataset(images), work, PrepareSettings(scoring=LossGrid(timesteps=1, flips=False)),
                       progress=False)
    Attributor(model, open_dataset(images), work, PrepareSettings(scoring=LossGrid(timesteps=2, flips=False)),
               overwrite=True, progress=False)
    with pytest.raises(StoreMismatchError, match="rebound to other inputs by another command"):
        first.prepare()
    assert not (work / "latents").exists()
