"""The setup record of an evaluation's output folder (``setup.json``): the setup its runs were made with, so a rerun
with other settings is refused instead of mixing runs made two ways.

Checked and written under its own lock (two runs started on one folder take turns), atomically (store.atomic). An
older record either loads or stops the run with one line that says what to do:
- a field added to the setups after the record was written reads as the value every older folder ran with
  (ADDED_FIELDS), and the record is rewritten with it;
- any other field the record lacks is named, with what to do (a new field that changes results and whose value older
  folders can be known to have belongs in ADDED_FIELDS);
- a record that is not a JSON object is named, with what to do.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..errors import SettingsError, read_json_file
from ..store import FileLock
from .output_files import write_json

SETUP_RECORD = "setup.json"

# Setup fields added after output folders were first made -> the value every folder made before them ran with.
ADDED_FIELDS = {"device": "cpu"}  # before runs could move to a GPU, every run trained and was measured on the CPU


def record_setup(setup, out_dir: str | os.PathLike,
                 free=("methods", "noise_seeds", "random_draws", "encoder", "method_options")) -> None:
    """Record `setup` (a dataclass) in out_dir, or check it against the record there: another setup is refused,
    except for the `free` fields, which add work without changing what is there (the record then takes their new
    values)."""
    path = Path(out_dir) / SETUP_RECORD
    numbers = json.loads(json.dumps(asdict(setup)))
    with FileLock(path.with_name(SETUP_RECORD + ".lock")):
        if path.is_file():
            check_setup(read_setup_record(path), numbers, free, path)
        write_json(path, numbers)


def read_setup_record(path: str | os.PathLike) -> dict:
    """The recorded setup, with ADDED_FIELDS filled in where the record predates them."""
    try:
        recorded = read_json_file(str(path), SettingsError)
    except SettingsError as error:
        raise SettingsError(f"{error}: the record of what this output folder was made with is unreadable; use "
                            "another output folder") from None
    if not isinstance(recorded, dict):
        raise SettingsError(f"{path} is not a setup record (a JSON {type(recorded).__name__}, not an object); use "
                            "another output folder")
    return ADDED_FIELDS | recorded


def check_setup(recorded: dict, numbers: dict, free, path: Path) -> None:
    """Refuse a setup (`numbers`, as JSON reads it) that differs from the record outside the `free` fields."""
    missing = sorted(k for k in numbers if k not in recorded and k not in free)
    if missing:
        values = "values" if len(missing) > 1 else "value"
        raise SettingsError(f"{path} does not record {', '.join(missing)} (written by an earlier version of "
                            f"unlearn_fast): use another output folder, or add the {values} this folder was made "
                            f"with to {path.name}")
    changed = [k for k in numbers if k not in free and recorded[k] != numbers[k]]
    if changed:
        what = "; ".join(f"{k}: was {recorded[k]!r}, now {numbers[k]!r}" for k in changed)
        raise SettingsError(f"{path.parent} was made with other settings ({what}); use another folder")
