"""interop/ is the top layer: nothing below it imports it (the command line and the exporters' alias sit beside it),
and its kronfluence module needs no kronfluence (it writes and reads kronfluence's files, it never calls it)."""
import ast
from pathlib import Path

import unlearn_fast

ROOT = Path(unlearn_fast.__file__).parent


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {"." * node.level + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    names |= {"." * node.level + alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              for alias in node.names}
    return names | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_nothing_below_interop_imports_it():
    above = {ROOT / "exporters.py"} | set((ROOT / "cli").rglob("*.py")) | set((ROOT / "interop").rglob("*.py"))
    below = [path for path in sorted(ROOT.rglob("*.py")) if path not in above]
    assert len(below) > 50
    for path in below:
        assert not any("interop" in name for name in imported(path)), path.relative_to(ROOT)


def test_the_kronfluence_layout_needs_no_kronfluence():
    for path in (ROOT / "interop" / "kronfluence.py", ROOT / "engine" / "curvature.py"):
        assert not any(name.split(".")[0] == "kronfluence" for name in imported(path)), path.name
