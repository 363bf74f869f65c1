"""No silent wrong answers, part 2 (issue 27), as a user (a careless or hostile one) meets each fault on the command
line: damaged artefacts, changed data behind a saved attribution, links out of the work directory, faults of the
machine, late-checked seeds, tracebacks, colliding output folders, forgotten flags, and the smaller defects. Each case
checks what the user sees (one line naming the culprit, exit status) and, from file hashes, that nothing finished was
lost. The fault table in docs/faults.md points here. Inputs that leave their folder and non-finite weights have their
own files (test_data_safety.py, test_model_safety.py)."""
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unlearn_fast.cli import main
from unlearn_fast.data import SubsetDataset, export_imagefolder

FAST = ["--timesteps", "2", "--no-flips", "--score-seed", "3", "--quiet"]
UNLEARN = ["--draws", "8", "--step", "alpha/N:0.001", "--sample-steps", "2"]  # α in α/N units
PROMPT = ["--prompt", "red apple"]


@pytest.fixture(scope="module")
def images(tmp_path_factory, default_dataset):
    root = tmp_path_factory.mktemp("faults-images")
    export_imagefolder(SubsetDataset(default_dataset, range(360, 376)), str(root))
    return root


@pytest.fixture(scope="module")
def attributed(images, tmp_path_factory):
    """A work directory prepared and attributed once (copied by the tests that change it), and its scores."""
    work = tmp_path_factory.mktemp("faults-work") / "work"
    main(["attribute", "--data", str(images), "--work-dir", str(work), *PROMPT, *UNLEARN, *FAST])
    return work, np.load(work / "attributions" / "latest" / "scores.npy")


def copy_of(tmp_path, source, name="copy"):
    target = tmp_path / name
    shutil.copytree(source, target, symlinks=True)
    return target


def state(folder: Path) -> dict:
    """Every file under `folder` (the log aside) with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != "log.txt"}


def one_line_error(capsys, argv) -> str:
    """Run the command, expect it to stop with a message of one line (no traceback), and return that line."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = stop.value.code if isinstance(stop.value.code, str) else capsys.readouterr().err.strip()
    assert stop.value.code not in (0, None) and "\n" not in str(message).strip(), message
    assert "Traceback" not in str(message), message
    return str(message)


def attribute(work, images, *extra):
    main(["attribute", "--data", str(images), "--work-dir", str(work), *PROMPT, *UNLEARN, *FAST, *extra])
    return np.load(work / "attributions" / "latest" / "scores.npy")


# ------------------------------------------------------------------------------ 1. damaged artefacts, verify

def test_a_truncated_array_is_refused_naming_it_and_verify_repair_recomputes_only_it(images, attributed, tmp_path,
                                                                                    capsys):
    source, scores = attributed
    work = copy_of(tmp_path, source)
    shutil.rmtree(work / "queries")  # so that the scores are computed again from the repaired latents
    os.truncate(work / "latents" / "data.npy", 300)  # a partial copy or restore
    message = one_line_error(capsys, ["attribute", "--data", str(images), "--work-dir", str(work), *PROMPT,
                                      *UNLEARN, *FAST])
    assert f"{work / 'latents'} is damaged (data.npy is 300 bytes" in message and "verify" in message
    assert os.path.getsize(work / "latents" / "data.npy") == 300  # never extended (zero-filled) by a memmap
    with pytest.raises(SystemExit) as stop:
        main(["verify", str(work)])
    assert stop.value.code == 1 and "DAMAGED latents:" in capsys.readouterr().out
    before = state(work)
    main(["verify", str(work), "--repair"])
    main(["verify", str(work)])  # exit 0
    assert not (work / "latents").exists()
    np.testing.assert_array_equal(attribute(work, images), scores)  # the intact folder's scores
    after, intact = state(work), state(source)
    assert after["latents/data.npy"] == intact["latents/data.npy"]
    kept = [name for name in before if not name.startswith(("latents/", "attributions/"))]
    assert kept and all(after[name] == before[name] for name in kept)  # nothing else was recomputed


def test_a_changed_chunk_is_found_by_its_digest_and_only_that_chunk_is_recomputed(images, attributed, tmp_path,
                                                                                capsys):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    intact = np.load(work / "losses_base" / "data.npy").copy()
    data = np.load(work / "losses_base" / "data.npy", mmap_mode="r+")
    data[3] += 1.0  # a bit flip, a bad restore: same size, other numbers
    data.flush()
    del data
    before = state(work)
    with pytest.raises(SystemExit):
        main(["verify", str(work), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in report["damaged"]] == ["losses_base"] and "chunks differ" in report["damaged"][0][
        "problem"]
    main(["verify", str(work), "--repair", "--json"])
    capsys.readouterr()
    main(["prepare", "--data", str(images), "--work-dir", str(work), *FAST])
    np.testing.assert_array_equal(np.load(work / "losses_base" / "data.npy"), intact)
    after = state(work)
    assert {k for k in before if before[k] != after.get(k)} <= {"losses_base/data.npy", "losses_base/done.npy",
                                                                  "losses_base/done.npy.sum",
                                                                  "losses_base/digests.npy",
                                                                  "losses_base/digests.npy.sum"}


@pytest.mark.parametrize("artefact", ["fisher.safetensors", "manifest.json", "caption_rows.npy", "text/meta.json"])
def test_garbage_in_an_artefact_is_one_line_naming_it(images, attributed, tmp_path, capsys, artefact):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    (work / artefact).write_bytes(b"\x00garbage{")
    message = one_line_error(capsys, ["attribute", "--data", str(images), "--work-dir", str(work), *PROMPT,
                                      *UNLEARN, *FAST, "--prompt", "green apple"])
    assert str(work / artefact) in message


# ------------------------------------------------------------------------------ 2. report after the data changed

def test_report_refuses_a_training_set_that_changed_since_the_attribution(images, tmp_path, capsys):
    data = copy_of(tmp_path, images, "data")
    work = tmp_path / "work"
    attribute(work, data)
    capsys.readouterr()
    main(["report", str(work / "attributions" / "latest"), "--top-k", "4"])  # unchanged data: fine
    lines = (data / "metadata.jsonl").read_text().splitlines()
    (data / "metadata.jsonl").write_text("\n".join(reversed(lines)) + "\n")  # same files and captions, other order
    message = one_line_error(capsys, ["report", str(work / "attributions" / "latest")])
    first_then, first_now = json.loads(lines[0])["file_name"], json.loads(lines[-1])["file_name"]
    assert f"{data} changed since this attribution was computed" in message
    assert f"first at row 0: was {first_then!r}, now {first_now!r}" in message


# ------------------------------------------------------------------------------ 5. links out of the work directory

def test_an_output_folder_linked_outside_is_refused_and_the_outside_is_untouched(images, attributed, tmp_path,
                                                                                 capsys):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    folder = next(p for p in (work / "attributions").iterdir() if p.is_dir() and not p.is_symlink())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "attribution.json").write_text("{}")
    (outside / "precious.txt").write_text("mine")
    shutil.rmtree(folder)
    folder.symlink_to(outside, target_is_directory=True)
    before = state(outside)
    message = one_line_error(capsys, ["attribute", "--data", str(images), "--work-dir", str(work), *PROMPT,
                                      *UNLEARN, *FAST])
    assert str(folder) in message and "symbolic link" in message
    assert state(outside) == before
    with pytest.raises(SystemExit):
        main(["verify", str(work)])
    assert f"DAMAGED {folder.relative_to(work)}: a symbolic link" in capsys.readouterr().out


def test_index_and_the_latest_link_always_name_one_folder(images, attributed, tmp_path):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    elsewhere = tmp_path / "elsewhere"
    attribute(work, images, "--out", str(elsewhere))
    index = json.loads((work / "attributions" / "index.json").read_text())
    assert str(elsewhere) in [entry["folder"] for entry in index["outputs"]]
    assert os.readlink(work / "attributions" / "latest") == index["latest"]  # an --out elsewhere does not move it


def test_a_killed_saves_leftover_folder_is_removed_by_the_next_save(images, attributed, tmp_path):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    folder = Path(os.path.realpath(work / "attributions" / "latest"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that is gone
    leftovers = [folder.with_name(f"{folder.name}.partial-{dead}"), folder.with_name(f"{folder.name}.old-{dead}")]
    alive = folder.with_name(f"{folder.name}.partial-{os.getppid()}")  # a live writer's is kept
    for path in (*leftovers, alive):
        path.mkdir()
    main(["report", str(work / "attributions" / "latest"), "--top-k", "3"])
    assert not any(path.exists() for path in leftovers) and alive.is_dir()


# ------------------------------------------------------------------------------ 6. faults of the machine

def _limited_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_write_that_fails_mid_run_is_one_line_releases_the_lock_and_keeps_finished_work(images, tmp_path):
    """A full disk, as a file-size limit emulates it: the first write past 20 kB fails (the latents' array)."""
    work = tmp_path / "work"
    command = [sys.executable, "-m", "unlearn_fast", "prepare", "--data", str(images), "--work-dir", str(work), *FAST]
    failed = subprocess.run(command, capture_output=True, text=True, preexec_fn=_limited_file_size(20_000))
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert str(work) in lines[0] and "File too large" in lines[0]
    assert not (work / ".lock").exists()
    finished = state(work)
    main(["prepare", "--data", str(images), "--work-dir", str(work), *FAST])  # space freed: the run completes
    assert {k: v for k, v in state(work).items() if k in finished} == finished
    main(["verify", str(work)])


def test_an_os_error_anywhere_is_one_line_naming_the_path(monkeypatch, capsys):
    cli = sys.modules["unlearn_fast.cli.main"]  # the module (the package exports its main function)

    def fail(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/work/latents/data.npy")
    monkeypatch.setattr(cli, "cmd_verify", fail)
    message = one_line_error(capsys, ["verify", "/data/work"])
    assert message.startswith("unlearn-fast verify: /data/work/latents/data.npy: No space left on device; free")


def test_a_folder_this_process_cannot_write_is_read_without_a_lock_file(tmp_path, monkeypatch):
    from unlearn_fast.store import FileLock

    def read_only(self, target, owner):
        raise OSError(errno.EROFS, "cannot create the lock (Read-only file system)", str(target))
    monkeypatch.setattr(FileLock, "_link", read_only)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with FileLock(tmp_path / ".lock", read_only_ok=True) as lock:
        assert lock.held and not (tmp_path / ".lock").exists()
    with pytest.raises(OSError) as error:
        FileLock(tmp_path / ".lock").acquire()
    assert error.value.filename == str(tmp_path / ".lock")


# ------------------------------------------------------------------------------ 7. seeds checked before any work

@pytest.mark.parametrize("flag", ["--score-seed", "--unlearn-seed", "--seed"])
def test_a_negative_seed_is_refused_before_the_work_directory_exists(images, tmp_path, capsys, flag):
    work = tmp_path / "work"
    message = one_line_error(capsys, ["attribute", "--data", str(images), "--work-dir", str(work), *PROMPT, *FAST,
                                      flag, "-1"])
    assert flag in message and "'-1'" in message and not work.exists()


def test_the_python_api_refuses_a_negative_seed_when_the_settings_are_made():
    from unlearn_fast.engine.fisher import FisherSettings
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.engine.unlearn import UnlearnSettings
    from unlearn_fast.errors import SettingsError

    for make in (lambda: LossGrid(seed=-1), lambda: FisherSettings(seed=-1), lambda: UnlearnSettings(seed=-1),
                 lambda: UnlearnSettings(seed=2**63), lambda: UnlearnSettings(retain=-2)):
        with pytest.raises(SettingsError):
            make()


# ------------------------------------------------------------------------------ 8. one line, not a traceback

def test_a_prompt_that_is_not_utf8_is_one_line_before_any_work(images, tmp_path, capsys):
    work = tmp_path / "work"
    prompt = os.fsdecode(b"red \xff apple")  # how Python hands a non-UTF-8 argument over
    message = one_line_error(capsys, ["attribute", "--data", str(images), "--work-dir", str(work), "--prompt", prompt,
                                      *FAST])
    assert "--prompt" in message and "not valid Unicode" in message and not work.exists()


def test_a_file_given_as_the_work_directory_is_one_line(images, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    message = one_line_error(capsys, ["prepare", "--data", str(images), "--work-dir", str(path), *FAST])
    assert str(path) in message and "is a file" in message and path.read_text() == "mine"


# ------------------------------------------------------------------------------ 9. one output folder per query

def test_two_stage_queries_write_two_output_folders(images, attributed, tmp_path):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    for prompt in ("red apple", "green apple"):
        main(["attribute", "--data", str(images), "--work-dir", str(work), "--prompt", prompt, "--candidates", "8",
              *UNLEARN, *FAST])
    index = json.loads((work / "attributions" / "index.json").read_text())
    two_stage = [entry for entry in index["outputs"] if "two-stage" in entry["folder"]]
    assert len(two_stage) == 2 and len({entry["folder"] for entry in two_stage}) == 2
    for entry in two_stage:
        record = json.loads((work / "attributions" / entry["folder"] / "attribution.json").read_text())
        assert record["queries"][0]["prompt"] == entry["prompts"][0]


def test_output_ids_of_two_queries_of_one_method_differ():
    from unlearn_fast.outputs import output_id

    records = [{"folder": "methods/dtrak-abc", "query": key} for key in ("q1", "q2")]
    assert output_id(records[:1]) != output_id(records[1:])
    fronts = [{"folder": f"queries/{key}-two-stage/abu-linear-c8"} for key in ("q1", "q2")]
    assert output_id(fronts[:1]) != output_id(fronts[1:])


# ------------------------------------------------------------------------------ 10. the folder remembers its inputs

def test_attribute_without_data_uses_the_data_the_work_directory_recorded(images, attributed, tmp_path):
    source, scores = attributed
    work = copy_of(tmp_path, source)
    before = state(work)
    main(["attribute", "--work-dir", str(work), *PROMPT, *UNLEARN, *FAST])  # no --data, no --model
    np.testing.assert_array_equal(np.load(work / "attributions" / "latest" / "scores.npy"), scores)
    assert {k: v for k, v in state(work).items() if k in before and not k.startswith("attributions/")} == {
        k: v for k, v in before.items() if not k.startswith("attributions/")}


def test_a_folder_without_recorded_sources_asks_for_the_flag_never_for_overwrite(images, attributed, tmp_path,
                                                                                capsys):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    manifest = json.loads((work / "manifest.json").read_text())
    del manifest["sources"]  # as an earlier version wrote it
    from unlearn_fast.store import write_json

    write_json(work / "manifest.json", manifest)
    message = one_line_error(capsys, ["attribute", "--work-dir", str(work), *PROMPT, *UNLEARN, *FAST])
    assert "give --model" in message and "--overwrite" not in message


def test_lora_alone_unlearns_the_adapter(images, tmp_path):
    pytest.importorskip("peft")
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.models.lora import add_lora, save_lora

    model = DiffusionModel.load("default")
    add_lora(model, rank=2, seed=0)
    with __import__("torch").no_grad():
        for name, parameter in model.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)  # a trained adapter (B starts at zero)
    lora = save_lora(model, str(tmp_path / "lora"))
    work = tmp_path / "work"
    main(["attribute", "--data", str(images), "--work-dir", str(work), "--lora", lora, *PROMPT, *UNLEARN, *FAST])
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["settings"]["fisher_group"] == "lora" and manifest["sources"]["lora"] == os.path.abspath(lora)
    record = json.loads((work / "attributions" / "latest" / "attribution.json").read_text())
    assert record["queries"][0]["unlearn"]["group"] == "lora"


# ------------------------------------------------------------------------------ 12. the smaller ones

def test_identical_runs_write_identical_bytes(images, attributed, tmp_path):
    source, _ = attributed
    work = tmp_path / "again"
    attribute(work, images)
    first, second = state(source), state(work)
    for name in ("fisher.safetensors", "manifest.json", "latents/data.npy", "losses_base/data.npy"):
        assert first[name] == second[name], name
    weights = [n for n in first if n.endswith("unlearned.safetensors")]
    assert weights and all(first[n] == second[n] for n in weights)


def test_a_resumed_query_keeps_its_steps_record(images, attributed, tmp_path):
    source, _ = attributed
    work = copy_of(tmp_path, source)
    folder = next((work / "queries").iterdir())
    steps = json.loads((folder / "query.json").read_text())["steps"]
    for name in ("query.json", "query.json.sum", "scores.npy", "scores.npy.sum"):
        (folder / name).unlink()  # killed after the unlearning, before the scores
    attribute(work, images)
    assert steps and json.loads((folder / "query.json").read_text())["steps"] == steps


def test_a_lock_held_on_another_host_names_the_file_to_remove(tmp_path):
    from unlearn_fast.store import FileLock, LockOwner

    lock = FileLock(tmp_path / ".lock")
    owner = LockOwner(host=socket.gethostname() + "-elsewhere", pid=1, started=None, since=0.0, command="x")
    message = lock.waiting_message(owner)
    assert "another host" in message and f"remove {tmp_path / '.lock'}" in message
    mine = LockOwner.me()
    assert "remove" not in lock.waiting_message(mine)


def test_text_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path, default_dataset):
    import csv

    from unlearn_fast.attribution import Attribution
    from unlearn_fast.data import open_dataset
    from unlearn_fast.query import Query
    from unlearn_fast.report.tables import unescaped_cell

    folder = tmp_path / "data"
    export_imagefolder(SubsetDataset(default_dataset, range(4)), str(folder))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    hostile = ['=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)"]
    for row, caption in zip(rows, hostile):
        row["text"] = caption
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = open_dataset(str(folder))
    query = Query(image=np.asarray(dataset.image(0).convert("RGB")), prompt="=cmd|' /C calc'!A0", source="x")
    attribution = Attribution(scores=np.arange(4, dtype=np.float32)[None], queries=[query],
                              records=[{"folder": "queries/x", "prompt": query.prompt}], dataset=dataset)
    out = tmp_path / "out"
    attribution.save(str(out), top_k=2)
    with open(out / "ranking.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert all(row["caption"].startswith("'") and row["prompt"].startswith("'") for row in table)
    assert sorted(unescaped_cell(row["caption"]) for row in table) == sorted(hostile)
