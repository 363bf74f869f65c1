"""The command line end to end on a small image folder: train (with --exclude), fine-tune with a new token, generate."""
import json

import pytest

from unlearn_fast.cli import _read_indices, main


@pytest.fixture(scope="module")
def folder(tmp_path_factory, default_dataset):
    root = tmp_path_factory.mktemp("images")
    rows = []
    for i in range(24):
        name = f"{i:03d}.png"
        default_dataset.image(i).save(root / name)
        rows.append({"file_name": name, "text": default_dataset.captions(i)[0]})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_read_indices(tmp_path):
    assert _read_indices("3, 17,42") == [3, 17, 42]
    (tmp_path / "k.txt").write_text("5\n6\n")
    (tmp_path / "k.json").write_text("[7, 8]")
    assert _read_indices(str(tmp_path / "k.txt")) == [5, 6] and _read_indices(str(tmp_path / "k.json")) == [7, 8]
    with pytest.raises(SystemExit, match="comma-separated integers"):
        _read_indices("3,x")


def test_train_finetune_and_generate(folder, tmp_path, capsys):
    base = tmp_path / "base"
    main(["train", "--data", str(folder), "--out", str(base), "--steps", "3", "--vae-steps", "2", "--batch-size", "8",
          "--exclude", "0,1,2", "--quiet", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((base / "training.json").read_text())
    assert summary["out"] == str(base) and record["num_excluded"] == 3 and record["request"]["exclude"] == [0, 1, 2]
    assert record["command"].startswith("unlearn-fast train --data")

    custom = tmp_path / "custom"
    main(["train", "--init-from", str(base), "--data", str(folder), "--add-token", "<v1>", "--out", str(custom),
          "--steps", "2", "--batch-size", "8", "--unet-parameters", "kv", "--quiet", "--json"])
    from unlearn_fast.models.adapter import DiffusionModel

    before, after = DiffusionModel.load(str(base)), DiffusionModel.load(str(custom))
    assert after.text.tokenizer.vocab == before.text.tokenizer.vocab + ["<v1>"]
    kv = set(after.parameter_group("kv"))
    changed = {n for n, p in after.unet.named_parameters() if not p.equal(dict(before.unet.named_parameters())[n])}
    assert changed and changed <= kv  # --unet-parameters kv trains the cross-attention keys/values only
    assert after.vae.state_dict().keys() == before.vae.state_dict().keys()
    assert all(after.vae.state_dict()[k].equal(v) for k, v in before.vae.state_dict().items())
    capsys.readouterr()

    out = tmp_path / "a.png"
    main(["generate", "red apple", "--model", str(base), "--seed", "4", "--steps", "3", "--out", str(out)])
    main(["generate", "red apple", "--model", str(base), "--seed", "4", "--steps", "3", "--out", str(tmp_path / "b.png")])
    assert out.read_bytes() == (tmp_path / "b.png").read_bytes()


def test_train_on_a_subset_file_trains_as_a_folder_of_just_those_images(folder, tmp_path, capsys):
    """`train --subset FILE` trains on the images the file names, in its order: the weights of a run on a folder of
    just those images, bit for bit (training is seeded over the set's rows)."""
    import shutil

    from unlearn_fast.models.adapter import DiffusionModel

    keep = [5, 0, 17, 9, 12, 3, 20, 8]
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (tmp_path / "eight").mkdir()
    for i in keep:
        shutil.copy(folder / rows[i]["file_name"], tmp_path / "eight" / rows[i]["file_name"])
    (tmp_path / "eight" / "metadata.jsonl").write_text("".join(json.dumps(rows[i]) + "\n" for i in keep))
    (tmp_path / "keep.txt").write_text("".join(rows[i]["file_name"] + "\n" for i in keep))
    recipe = ["--steps", "3", "--vae-steps", "2", "--batch-size", "4", "--quiet", "--json"]
    main(["train", "--data", str(tmp_path / "eight"), "--out", str(tmp_path / "alone"), *recipe])
    main(["train", "--data", str(folder), "--subset", str(tmp_path / "keep.txt"), "--out", str(tmp_path / "subset"),
          *recipe])
    record = json.loads((tmp_path / "subset" / "training.json").read_text())
    assert record["request"]["subset"] == str(tmp_path / "keep.txt")
    alone, subset = DiffusionModel.load(str(tmp_path / "alone")), DiffusionModel.load(str(tmp_path / "subset"))
    assert alone.fingerprint() == subset.fingerprint()


def test_evaluate_set_puts_method_options_over_the_profiles():
    from unlearn_fast.cli.evaluate import _method_options
    from unlearn_fast.errors import SettingsError

    base = {"dtrak": {"dim": 2048}}
    merged = _method_options(base, ["abu.step=alpha/N:0.01", "dtrak.dim=512", "abu.group=attention", "abu.cap=true"])
    assert merged == {"dtrak": {"dim": 512}, "abu": {"step": "alpha/N:0.01", "group": "attention", "cap": True}}
    assert base == {"dtrak": {"dim": 2048}}  # the profile itself is left alone
    with pytest.raises(SettingsError, match="METHOD.KEY=VALUE"):
        _method_options(base, ["alpha=0.01"])


def test_help_and_version_import_neither_torch_nor_diffusers():
    """`unlearn-fast --help` and `--version` build no verb's options, so they import no torch and no diffusers (a
    second on a busy machine instead of several); a verb's own --help still shows every option."""
    import subprocess
    import sys

    from unlearn_fast import __version__

    code = ("import sys\nfrom unlearn_fast.cli import main\nfor argv in (['--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("LOADED []"), out
    assert f"unlearn-fast {__version__}" in out and "attribute" in out and "evaluate" in out
    verb = subprocess.run([sys.executable, "-m", "unlearn_fast", "attribute", "--help"], capture_output=True,
                          text=True, check=True).stdout
    assert "--unlearn-steps" in verb and "--fisher-group" in verb and "(default fixed:7.5e-06" in verb


@pytest.mark.parametrize("verb", ["attribute", "prepare", "demo", "report", "generate", "grid", "verify",
                                  "export-data", "export-scores", "train", "evaluate"])
def test_a_verb_s_help_imports_neither_torch_nor_diffusers(verb):
    """The settings dataclasses the flags are generated from live in light modules (engine/loss_grid.py,
    engine/unlearn_settings.py, prepare_settings.py, ...), so a verb's --help loads no engine either."""
    import subprocess
    import sys

    code = ("import sys\nfrom unlearn_fast.cli import main\ntry:\n"
            f"    main([{verb!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("LOADED []"), out[-300:]
    assert "--help" in out


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_silences_diffusers_and_transformers_bars_too(tmp_path, monkeypatch, quiet):
    """--quiet turns off the libraries' own loading bars and notices (a pipeline folder's 'Loading pipeline
    components' bar) while the verb runs, not only this package's; without it they stay as they were; either way the
    libraries are left as they were found (main may run in-process)."""
    import importlib

    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    cli = importlib.import_module("unlearn_fast.cli.main")  # the module (the package exports its main function)

    def state():
        return (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
                diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())

    seen = []
    monkeypatch.setattr(cli, "cmd_prepare", lambda args: seen.append(state()))
    before = state()
    cli.main(["prepare", "--work-dir", str(tmp_path / "work"), *(["--quiet"] if quiet else [])])
    assert seen == [(False, False, diffusers_logging.ERROR, transformers_logging.ERROR) if quiet else before]
    assert state() == before
