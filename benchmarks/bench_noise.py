"""Throughput of ops.gaussian_noise per backend: noise values generated per second.

    python3 -m pytest benchmarks/bench_noise.py --benchmark-columns=mean,stddev,rounds --benchmark-group-by=group

Triton runs on CUDA tensors when a GPU is present; otherwise under TRITON_INTERPRET=1 (set by conftest.py) on a tiny
size only: that timing shows the interpreter works, it is not a speed number.
"""
import math

import pytest
import torch

from unlearn_fast import ops

SIZES = {"4096 x 4x8x8": (4096, (4, 8, 8)), "256 x 4x64x64": (256, (4, 64, 64))}
INTERPRETER_SIZE = {"16 x 4x8x8 (triton interpreter, not a speed number)": (16, (4, 8, 8))}
DEVICE = {"reference": "cpu", "cpp": "cpu", "cuda": "cuda", "triton": "cuda" if torch.cuda.is_available() else "cpu"}


def _run(benchmark, backend, device, batch, shape, group):
    if backend not in ops.available_backends(device):
        pytest.skip(f"{backend} backend not available on {device}")
    ids = torch.arange(batch, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def generate():
        out = ops.gaussian_noise(0, ids, 7, 0, shape, backend=backend)
        sync()
        return out

    generate()  # warm-up: compilation, first-touch allocation
    benchmark.group = group
    out = benchmark(generate)
    assert ops.last_backend("gaussian_noise") == backend and out.shape == (batch, *shape)
    values = batch * math.prod(shape)
    benchmark.extra_info.update(values=values, device=device, values_per_s=values / benchmark.stats.stats.mean)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", ["reference", "cpp", "cuda", "triton"])
def test_gaussian_noise_throughput(benchmark, backend, size):
    if backend == "triton" and DEVICE["triton"] == "cpu":
        pytest.skip("triton without a GPU runs interpreted: see the interpreter size")
    batch, shape = SIZES[size]
    _run(benchmark, backend, DEVICE[backend], batch, shape, f"gaussian_noise {size}")


@pytest.mark.parametrize("size", INTERPRETER_SIZE)
@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_gaussian_noise_triton_interpreter_smoke(benchmark, backend, size):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: triton is benchmarked compiled")
    batch, shape = INTERPRETER_SIZE[size]
    _run(benchmark, backend, "cpu", batch, shape, f"gaussian_noise {size}")
