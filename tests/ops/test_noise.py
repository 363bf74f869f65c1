"""ops.gaussian_noise: every backend against the PyTorch reference, invariances, statistics, validation, builds."""
import math
import shutil
import subprocess
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from unlearn_fast import ops
from unlearn_fast.ops import _backend
from unlearn_fast.ops.noise_reference import gaussian_noise_reference, philox4x32_10
from triton_interpreter import run_under_triton_interpreter

ROOT = Path(__file__).resolve().parents[2]
HAS_EXT = _backend.native() is not None
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="unlearn_fast._C is not built")
needs_cuda = pytest.mark.gpu  # skipped without a CUDA device (conftest)
CPU_BACKENDS = ["reference"] + (["cpp"] if HAS_EXT else [])


def reference(seed, ids, steps, flips, numel, dtype=torch.float32):
    as_long = lambda v: torch.as_tensor(v, dtype=torch.int64)  # noqa: E731
    return gaussian_noise_reference(seed, as_long(ids), as_long(steps), as_long(flips), numel, dtype)


def corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# Random123's kat_vectors for philox4x32_10: counter, key, output.
PHILOX_KATS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KATS)
def test_reference_philox_known_answers(counter, key, expected):
    words = philox4x32_10(*(torch.tensor([c]) for c in counter), *key)
    assert tuple(int(w) for w in words) == expected


def test_reference_follows_box_muller_spec():
    # Element e of a sample is z[e % 4] of the Philox block at counter (e // 4, id, t, flip), computed here in Python.
    seed, example_id, step, flip = 2**40 + 17, 12345, 6, 1
    got = reference(seed, [example_id], [step], [flip], 10, torch.float64)[0]
    for e in range(10):
        words = [int(w) for w in philox4x32_10(*(torch.tensor([c]) for c in (e // 4, example_id, step, flip)), seed & 0xFFFFFFFF, seed >> 32)]
        u = [(w + 0.5) / 2**32 for w in words]
        pair, angle = divmod(e % 4, 2)
        radius = math.sqrt(-2 * math.log(u[2 * pair]))
        expected = radius * (math.cos, math.sin)[angle](2 * math.pi * u[2 * pair + 1])
        assert got[e].item() == pytest.approx(expected, rel=1e-14, abs=1e-14)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_reference(dtype):
    # 2**20 samples over edge-case keys and counters; float32 is rounded once from float64 in both, so nearly all
    # values are bit-identical (libm and Sleef may differ in the last float64 bit).
    ids = torch.tensor([0, 1, 2**32 - 1, 77, 5, 123456789, 2**31, 42] * 32)
    steps = torch.arange(256) % 20
    flips = torch.arange(256) % 2
    for seed in (0, 2**64 - 1, 0xDEADBEEF_12345678):
        got = ops.gaussian_noise(seed, ids, steps, flips, (4, 32, 32), dtype=dtype, backend="cpp")
        want = ops.gaussian_noise(seed, ids, steps, flips, (4, 32, 32), dtype=dtype, backend="reference")
        assert got.dtype == want.dtype == dtype and got.shape == want.shape == (256, 4, 32, 32)
        assert (got - want).abs().max().item() <= (1e-6 if dtype == torch.float32 else 1e-12)
        assert (got == want).double().mean().item() >= (0.9999 if dtype == torch.float32 else 0.9)


def test_triton_interpreter_matches_reference():
    # triton.jit picks interpreter vs compiler when unlearn_fast.triton_kernels.noise is imported, so TRITON_INTERPRET=1 must be
    # set first: a fresh interpreter is the robust way, whatever this process imported already.
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from unlearn_fast import ops
        ids = torch.tensor([0, 2**32 - 1, 9, 9]); steps = torch.tensor([0, 2**32 - 1, 3, 3]); flips = torch.tensor([0, 1, 0, 1])
        for seed in (0, 2**64 - 1, 987654321987654321):
            for shape in ((3, 5, 7), (1030,)):  # odd tail; more than one program per row
                for dtype in (torch.float32, torch.float64):
                    got = ops.gaussian_noise(seed, ids, steps, flips, shape, dtype=dtype, backend="triton")
                    assert ops.last_backend("gaussian_noise") == "triton"
                    want = ops.gaussian_noise(seed, ids, steps, flips, shape, dtype=dtype, backend="reference")
                    diff = (got - want).abs().max().item()
                    assert diff <= (0 if dtype == torch.float32 else 1e-12), (seed, shape, dtype, diff)
        print("ok")
        """
    )
    run_under_triton_interpreter(script)


def test_triton_on_cpu_says_when_it_was_imported_compiled(monkeypatch):
    triton = pytest.importorskip("triton")
    from unlearn_fast.triton_kernels import noise as triton_noise

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if isinstance(triton_noise._gaussian_noise_kernel, triton.runtime.JITFunction):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 was set before it was imported"):
            ops.gaussian_noise(0, [1], [0], [0], 4, backend="triton")
    else:  # this whole process runs under the interpreter
        assert torch.equal(ops.gaussian_noise(0, [1], [0], [0], 4, backend="triton"), reference(0, [1], [0], [0], 4))


@needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_backends_match_reference(backend):
    if backend not in ops.available_backends("cuda"):
        pytest.skip(f"{backend} backend not available")
    ids = torch.arange(1000, device="cuda") * 7919
    steps, flips = ids % 10, ids % 2
    for dtype in (torch.float32, torch.float64):
        got = ops.gaussian_noise(3, ids, steps, flips, (4, 16, 16), dtype=dtype, backend=backend)  # 2**20 samples
        want = ops.gaussian_noise(3, ids.cpu(), steps.cpu(), flips.cpu(), (4, 16, 16), dtype=dtype, backend="reference")
        assert ops.last_backend("gaussian_noise") == "reference"
        assert (got.cpu() - want).abs().max().item() <= (1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rows_independent_of_batch_split_order_and_duplication(backend):
    ids = torch.tensor([5, 9, 2, 9, 100, 0, 2**32 - 1, 31])
    steps = torch.tensor([0, 3, 3, 3, 19, 0, 7, 2])
    flips = torch.tensor([1, 0, 0, 0, 1, 0, 1, 1])  # rows 1 and 3 are the same sample
    full = ops.gaussian_noise(11, ids, steps, flips, (3, 5, 7), backend=backend)
    assert torch.equal(full[1], full[3])
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ops.gaussian_noise(11, ids[perm], steps[perm], flips[perm], (3, 5, 7), backend=backend), full[perm])
    chunks = [ops.gaussian_noise(11, ids[i : i + 3], steps[i : i + 3], flips[i : i + 3], (3, 5, 7), backend=backend)
              for i in range(0, len(ids), 3)]
    assert torch.equal(torch.cat(chunks), full)
    single = ops.gaussian_noise(11, int(ids[4]), int(steps[4]), int(flips[4]), (3, 5, 7), backend=backend)
    assert torch.equal(single[0], full[4])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 7), (1,), (2, 3), (5,), (4, 64, 64)])
def test_element_noise_independent_of_shape(backend, shape):
    # Element e depends on e only, so any shape with numel n is the first n values of a longer flat sample.
    numel = math.prod(shape)
    out = ops.gaussian_noise(4, [3, 8], [1, 1], [0, 1], shape, backend=backend)
    assert out.shape == (2, *shape)
    longer = ops.gaussian_noise(4, [3, 8], [1, 1], [0, 1], numel + 5, backend=backend)
    assert torch.equal(out.reshape(2, numel), longer[:, :numel])


def test_empty_batch_and_empty_sample():
    assert ops.gaussian_noise(0, [], [], [], (3, 4)).shape == (0, 3, 4)
    assert ops.gaussian_noise(0, [1, 2], 0, 0, (0, 4)).shape == (2, 0, 4)


def test_moments_and_normal_cdf():
    # n = 2**20 samples: standard errors are 1/sqrt(n) ~ 1e-3 for the mean, sqrt(2/n) ~ 1.4e-3 for the variance and
    # sqrt(p(1-p)/n) <= 4.9e-4 for the CDF; bounds at 5 standard errors fail a correct generator w.p. ~1e-6 each.
    n = 2**20
    z = ops.gaussian_noise(2024, torch.arange(256), 4, 0, (4, 32, 32)).double().flatten()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    for x in (-2.0, -1.0, 0.0, 0.5, 1.5, 2.5):
        p = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        assert abs((z < x).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n), x


def test_no_correlation_between_neighbours():
    # For m independent pairs the sample correlation has standard error ~ 1/sqrt(m); the bound is 5 of them.
    shape, ids = (4, 32, 32), torch.arange(128)
    m = len(ids) * math.prod(shape)
    bound = 5 / math.sqrt(m)
    base = ops.gaussian_noise(1, ids, 3, 0, shape)
    neighbours = {
        "example id + 1": ops.gaussian_noise(1, ids + 1, 3, 0, shape),
        "timestep index + 1": ops.gaussian_noise(1, ids, 4, 0, shape),
        "flip": ops.gaussian_noise(1, ids, 3, 1, shape),
        "seed + 1": ops.gaussian_noise(2, ids, 3, 0, shape),
        "seed + 2**32": ops.gaussian_noise(1 + 2**32, ids, 3, 0, shape),
    }
    for name, other in neighbours.items():
        assert abs(corr(base, other)) < bound, name
        assert abs(corr(base**2, other**2)) < 2 * bound, name  # var(z^2) = 2: no dependence through magnitudes either
    flat = base.flatten(1)
    for lag in (1, 2, 3, 4, 5):  # within and across Philox blocks of 4 elements
        assert abs(corr(flat[:, :-lag], flat[:, lag:])) < 5 / math.sqrt(flat[:, lag:].numel()), lag


def test_different_seeds_differ():
    a = ops.gaussian_noise(0, [1], [2], [0], 1000)
    for seed in (1, 2**32, 2**63, 2**64 - 1):
        assert not torch.isclose(a, ops.gaussian_noise(seed, [1], [2], [0], 1000)).any(), seed


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(example_ids=[-1, 2]), r"example_ids must be in \[0, 4294967296\), got -1 at position 0"),
        (dict(example_ids=[0, 2**32]), "example_ids .* got 4294967296 at position 1"),
        (dict(example_ids=torch.tensor([[1, 2]])), r"example_ids must be an int or 1-D, got shape \(1, 2\)"),
        (dict(example_ids=torch.tensor([1.0, 2.0])), "example_ids must have an integer or bool dtype, got torch.float32"),
        (dict(example_ids="ab"), "example_ids must be an int, a sequence"),
        (dict(timestep_indices=2**32), "timestep_indices must be in"),
        (dict(flips=[0, 2]), r"flips must be in \[0, 2\), got 2 at position 1"),
        (dict(example_ids=[1, 2, 3]), "same length"),
        (dict(shape=(-1, 3)), "shape"),
        (dict(shape=(2**35,)), r"at most 2\*\*34"),
        (dict(dtype=torch.float16), "dtype must be torch.float32 or torch.float64, got torch.float16"),
        (dict(backend="gpu"), "backend must be one of"),
    ],
)
def test_validation_errors(kwargs, match):
    args = dict(seed=0, example_ids=[1, 2], timestep_indices=[0, 0], flips=[0, 1], shape=(2, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.gaussian_noise(args.pop("seed"), args.pop("example_ids"), args.pop("timestep_indices"), args.pop("flips"),
                           args.pop("shape"), **args)


def test_unavailable_backends_raise(monkeypatch):
    with pytest.raises(ops.BackendUnavailableError, match="'cuda' is unavailable: the cuda backend runs on CUDA tensors"):
        ops.gaussian_noise(0, [1], [0], [0], 4, backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ops.BackendUnavailableError, match="'triton' is unavailable"):
        ops.gaussian_noise(0, [1], [0], [0], 4, backend="triton")


def test_backend_is_reported():
    assert "reference" in ops.available_backends()
    assert ("cpp" in ops.available_backends("cpu")) == HAS_EXT
    ops.gaussian_noise(0, [1], [0], [0], 4, backend="reference")
    assert ops.last_backend("gaussian_noise") == "reference"
    ops.gaussian_noise(0, [1], [0], [0], 4)
    assert ops.last_backend("gaussian_noise") == ("cpp" if HAS_EXT else "reference")


def test_works_without_extension(monkeypatch):
    def missing():
        raise ImportError("simulated: no module named unlearn_fast._C")

    monkeypatch.setattr(_backend, "_import_extension", missing)
    monkeypatch.setattr(_backend, "_extension", _backend._NOT_LOADED)
    with pytest.warns(UserWarning, match="native extension unavailable .*simulated.* using the PyTorch reference"):
        out = ops.gaussian_noise(9, [1, 2], 0, 0, (3, 5))
    assert ops.last_backend("gaussian_noise") == "reference"
    assert torch.equal(out.flatten(1), reference(9, [1, 2], [0, 0], [0, 0], 15))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the notice is given once per process
        ops.gaussian_noise(9, [1, 2], 0, 0, (3, 5))
    assert "cpp" not in ops.available_backends()
    with pytest.raises(ops.BackendUnavailableError, match="unlearn_fast._C is not built"):
        ops.gaussian_noise(9, [1], 0, 0, 4, backend="cpp")


@needs_ext
def test_binding_checks_and_flip_dtypes():
    C = _backend.native()
    ids, steps = torch.tensor([3, 4]), torch.tensor([0, 1])
    base = C.gaussian_noise(5, ids, steps, torch.tensor([0, 1]), 9, torch.float32)
    for flips in (torch.tensor([0, 1], dtype=torch.uint8), torch.tensor([False, True])):
        assert torch.equal(C.gaussian_noise(5, ids, steps, flips, 9, torch.float32), base)
    bad_calls = [
        ((5, ids.int(), steps, steps, 9, torch.float32), "ids must be int64, got Int"),
        ((5, ids, steps[:1], steps, 9, torch.float32), r"timestep_idx must have shape \(2,\)"),
        ((5, ids, steps, torch.tensor([0.0, 1.0]), 9, torch.float32), "flips must be int64, uint8 or bool"),
        ((5, ids, steps, steps, -1, torch.float32), r"numel must be in \[0, 2\^34\]"),
        ((5, ids, steps, steps, 9, torch.float16), "dtype must be float32 or float64"),
    ]
    for args, match in bad_calls:
        with pytest.raises(RuntimeError, match=match):
            C.gaussian_noise(*args)
    assert C.openmp_threads() >= 1 and isinstance(C.has_cuda(), bool)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "csrc").glob("*.cu")))  # every op's CUDA file
def test_cuda_source_compiles_standalone(tmp_path, source):
    result = subprocess.run(["nvcc", "-std=c++17", "-c", str(ROOT / "csrc" / source), "-o", str(tmp_path / "out.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None, reason="cmake not on PATH")
def test_cmake_build_and_ctest(tmp_path):
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(tmp_path)], ["cmake", "--build", str(tmp_path), "-j2"],
                ["ctest", "--test-dir", str(tmp_path), "--output-on-failure"]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
