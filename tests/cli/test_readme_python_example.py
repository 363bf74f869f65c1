"""README's Python example and `unlearn-fast attribute` give bit-identical scores on one work directory: the Python
API's defaults are the command line's, declared once (the settings dataclasses)."""
import json
import re
import shutil
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python_block(after: str) -> str:
    """The first ```python block of README.md after the line containing `after`."""
    text = README.read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_readme_python_example_scores_as_the_command_line_does(tmp_path, default_image_folder, capsys):
    from unlearn_fast.cli import main
    from unlearn_fast.data import open_dataset
    from unlearn_fast.models.adapter import DiffusionModel

    work = tmp_path / "work"
    code = readme_python_block("Attribution in Python")
    assert '"work/"' in code and "attributor.attribute([query])" in code  # the example as README shows it
    code = code.replace('"work/"', repr(str(work))).replace('"elsewhere/"', repr(str(tmp_path / "elsewhere")))
    # README's previous block loads the shipped model and data; 24 of its images keep the test short.
    names = {"model": DiffusionModel.load("default"), "data": open_dataset(default_image_folder(range(360, 384)))}
    exec(compile(code, str(README), "exec"), names)
    python = names["attribution"]
    folders = sorted(p.name for p in (work / "queries").iterdir())
    shutil.rmtree(work / "queries")  # the command recomputes the unlearning and the scores, not reads them back
    capsys.readouterr()

    main(["attribute", "--work-dir", str(work), "--prompt", "red apple", "--seed", "0", "--quiet", "--json",
          "--out", str(tmp_path / "cli")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(p.name for p in (work / "queries").iterdir()) == folders  # the same settings key
    cli = np.load(summary["files"]["scores"])
    assert cli.dtype == python.scores.dtype and np.array_equal(cli, python.scores)
