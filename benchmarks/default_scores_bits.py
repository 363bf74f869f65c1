"""Are the default scores the same bits as another checkout's, on this CPU? Runs each checkout's own recorded case
(tests/default_scores_case.py: AbU with shared and per-example noise, D-TRAK, base losses, the generated query) plus
the package-default AbU (UnlearnSettings(draws=16)), each in its own process on its own code, and compares the arrays
byte for byte. The tests compare with the recording to float32 rounding (other CPUs round differently); this is the
exact check for a refactor, on one machine.

    git worktree add /tmp/before <commit>     # the other checkout (its native extension built or copied in)
    python3 benchmarks/default_scores_bits.py /tmp/before
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]

CASE = r"""
import sys, tempfile
from pathlib import Path
import numpy as np
import default_scores_case as case
import unlearn_fast
assert unlearn_fast.__file__.startswith(sys.argv[1]), unlearn_fast.__file__
with tempfile.TemporaryDirectory() as tmp:
    arrays = case.compute(Path(tmp))
    from unlearn_fast.attributor import Attributor
    from unlearn_fast.data import SubsetDataset, open_dataset
    from unlearn_fast.engine.unlearn import UnlearnSettings
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.query import query_from_prompt
    model = DiffusionModel.load("default")
    query = query_from_prompt(model, "red apple", seed=5, steps=4)
    attributor = Attributor(model, SubsetDataset(open_dataset("default"), case.ROWS), Path(tmp) / "default",
                            progress=False)
    attributor.prepare()
    arrays["abu_default_recipe"] = attributor.attribute([query], UnlearnSettings(draws=16)).scores
np.savez(sys.argv[2], **arrays)
"""


def arrays_of(checkout: Path, out: str) -> dict[str, np.ndarray]:
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{checkout / 'tests'}"}
    subprocess.run([sys.executable, "-c", CASE, str(checkout), out], env=env, check=True, cwd=tempfile.gettempdir())
    loaded = np.load(out)
    return {name: loaded[name] for name in loaded.files}


def main() -> int:
    other = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        mine, theirs = arrays_of(HERE, f"{tmp}/here.npz"), arrays_of(other, f"{tmp}/other.npz")
    if set(mine) != set(theirs):
        print(f"different arrays: {sorted(mine)} vs {sorted(theirs)}")
        return 1
    same = True
    for name in sorted(mine):
        equal = mine[name].dtype == theirs[name].dtype and mine[name].shape == theirs[name].shape and \
            mine[name].tobytes() == theirs[name].tobytes()
        same &= equal
        print(f"{name:22s} {str(mine[name].shape):12s} {'bit-identical' if equal else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
