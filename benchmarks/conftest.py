"""Shared setup of the benchmark suites (pytest-benchmark)."""
import os

import torch

# Without a GPU, Triton kernels can only run in the interpreter, which must be chosen before they are imported.
# Interpreter timings are correctness smoke runs, never speed numbers; suites label them as such.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
