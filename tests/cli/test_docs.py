"""README and docs/: the first screen holds the set-up and the three commands for one's own model and data, those
commands run as written, every relative link resolves, and docs/flags.md is the parser's own reference."""
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FIRST_SCREEN = 60


def block_after(text: str, marker: str) -> str:
    start = text.index(marker)
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def test_the_first_screen_holds_install_demo_tests_and_the_three_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    screen = "\n".join(lines[:FIRST_SCREEN])
    assert "python3 -m unlearn_fast demo" in screen and "<!-- test-command -->" in screen
    commands = block_after(screen, "<!-- own-model-commands -->").strip().splitlines()
    assert len(commands) == 3 and all(command.startswith("unlearn-fast ") for command in commands)
    end = screen.index("```", screen.index("```bash", screen.index("<!-- own-model-commands -->")) + 7)
    assert end < len(screen)  # the block closes on the first screen


@pytest.mark.slow
def test_the_three_commands_run_as_written(tmp_path, default_image_folder, monkeypatch, capsys):
    """The README's own-model commands on a copy of a pipeline folder and 24 training images: each runs, the first
    attribute's AbU scores are the comparison's AbU column bit for bit, and the index lists both queries."""
    from PIL import Image

    from unlearn_fast.cli import main
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.models.folder import DEFAULT_MODEL

    shutil.copytree(DEFAULT_MODEL, tmp_path / "my_pipeline")
    shutil.copytree(default_image_folder(range(360, 384)), tmp_path / "my_images")
    image = DiffusionModel.load(str(tmp_path / "my_pipeline")).generate(["red apple"], seed=0, steps=10)[0]
    Image.fromarray(image).save(tmp_path / "generated.png")
    monkeypatch.chdir(tmp_path)
    commands = block_after(README.read_text(encoding="utf-8"), "<!-- own-model-commands -->").strip().splitlines()
    for command in commands:
        main([*shlex.split(command)[1:], "--quiet"])
    capsys.readouterr()
    attributions = tmp_path / "work" / "attributions"
    outputs = sorted(p for p in attributions.iterdir() if p.is_dir() and not p.is_symlink())
    plain = next(p for p in outputs if not p.name.startswith("compare-"))
    compared = next(p for p in outputs if p.name.startswith("compare-"))
    assert np.array_equal(np.load(plain / "scores.npy"), np.load(compared / "abu" / "scores.npy"))
    assert {p.name for p in compared.iterdir() if p.is_dir()} >= {"abu", "dtrak", "pixel"}
    assert "trust" in (compared / "dtrak" / "attribution.json").read_text()  # --controls: per method
    assert (attributions / "index.html").read_text().count('class="prompt"') == 2


def _links(path: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    dead = [target for target in _links(page) if not (page.parent / target).exists()]
    assert dead == []


def test_the_flag_reference_is_the_parser_s_own():
    from unlearn_fast.cli.flag_reference import flag_reference

    written = (ROOT / "docs" / "flags.md").read_text(encoding="utf-8")
    assert written == flag_reference(), "regenerate: python3 -m unlearn_fast.cli.flag_reference > docs/flags.md"
