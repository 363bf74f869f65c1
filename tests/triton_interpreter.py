"""Run a test script with Triton kernels under TRITON_INTERPRET=1, in a fresh interpreter.

triton.jit decides at import time whether it interprets, so a process that imported triton compiled (or another test
module) cannot switch: the script runs in a subprocess that prints "ok" when every check in it passed.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_under_triton_interpreter(script: str) -> None:
    folders = [ROOT / "tests"] + sorted(p for p in (ROOT / "tests").iterdir() if p.is_dir())  # scripts import
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(map(str, folders + [ROOT])))  # tests
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
