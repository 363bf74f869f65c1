"""The setup record of an evaluation's output folder (``setup.json``): the setup its runs were made with, so a rerun
with other settings is refused instead of mixing runs made two ways."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

from ..errors import SettingsError
from .output_files import write_json


def record_setup(setup, out_dir: str,
                 free=("methods", "noise_seeds", "random_draws", "encoder", "method_options")) -> None:
    """The setup an output folder was made with; another setup in the same folder is refused (it would mix runs),
    except for the `free` fields, which add work without changing what is there."""
    path = os.path.join(out_dir, "setup.json")
    numbers = json.loads(json.dumps(asdict(setup)))
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
        recorded = {"device": "cpu"} | recorded  # folders made before runs could move to a GPU ran on the CPU
        changed = sorted(k for k in numbers if recorded.get(k) != numbers[k] and k not in free)
        if changed:
            raise SettingsError(f"{out_dir} was made with other settings ({', '.join(changed)}); use another folder")
    write_json(path, numbers)
