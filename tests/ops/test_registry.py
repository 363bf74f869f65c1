"""ops/registry.py: every registered backend names a real function, and nothing is imported before it runs."""
import importlib
import importlib.util
import subprocess
import sys

import pytest
import torch

from unlearn_fast.ops import _backend, registry
from ops_cases import HAS_EXT


def test_every_kernel_op_registers_every_selectable_backend():
    for op, table in registry.IMPLEMENTATIONS.items():
        if op not in registry.PLAIN_PYTORCH_AUTO:
            assert set(table) == set(_backend.BACKENDS) - {"auto"}, op
        else:
            assert registry.PLAIN_PYTORCH_AUTO[op] in table, op


@pytest.mark.parametrize("op, backend", [(op, b) for op, table in registry.IMPLEMENTATIONS.items() for b in table])
def test_every_entry_names_a_function(op, backend):
    module, _, name = registry.IMPLEMENTATIONS[op][backend].partition(":")
    if module == "unlearn_fast._C" and not HAS_EXT:
        pytest.skip("unlearn_fast._C is not built")
    if module.startswith("unlearn_fast.triton_kernels") and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    assert callable(registry.implementation(op, backend))
    assert registry.implementation(op, backend) is getattr(importlib.import_module(module), name)


def test_import_loads_no_backend():
    code = ("import sys, unlearn_fast.ops; "
            "print(sorted(m for m in sys.modules if m == 'triton' or m.startswith(('unlearn_fast._C', "
            "'unlearn_fast.triton_kernels'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plain_pytorch_op_rejects_kernel_backends():
    with pytest.raises(ValueError, match=r"projected_linear_gradient: backend must be one of \('auto', 'blocked', "
                                         r"'reference'\), got 'cpp'"):
        registry.select("projected_linear_gradient", "cpp", torch.device("cpu"))
