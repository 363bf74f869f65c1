"""ops.noisy_input: the reference against the unfused composition and the scheduler, every backend against the
reference (odd sizes, flips, non-contiguous and 16-bit inputs), batch invariance, validation, backend reporting."""
import textwrap

import pytest
import torch

from ops_cases import CPU_BACKENDS, CUDA_BACKENDS, HAS_EXT, needs_ext
from unlearn_fast import ops
from unlearn_fast.ops import _backend
from triton_interpreter import run_under_triton_interpreter

LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed")
SEED = 0xC0FFEE_0000_1234


def strided(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A copy of x (B, C, H, W) with the same values and a non-contiguous memory layout (or contiguous)."""
    if layout == "contiguous":
        return x.clone()
    if layout == "channels_last":  # stored (B, H, W, C)
        return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    if layout == "sliced":  # every other column of every other row of a bigger tensor, with a storage offset
        big = torch.zeros(2 * x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3] + 1, dtype=x.dtype, device=x.device)
        big[::2, :, :, 1::2] = x
        return big[::2, :, :, 1::2]
    if layout == "transposed":  # stored (B, C, W, H)
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    raise ValueError(layout)


def make_rows(batch: int, device="cpu", seed: int = 0):
    """Per-row inputs: coefficients like a scheduler's, keys with repeated examples, flips mixed."""
    g = torch.Generator().manual_seed(seed)
    abar = torch.rand(batch, generator=g, dtype=torch.float64).clamp(1e-3, 0.999)
    a_t, s_t = abar.sqrt().float(), (1 - abar).sqrt().float()
    ids = torch.randint(0, 2**32, (batch,), generator=g)
    ids[1::3] = ids[0]  # the same example at several timesteps and flips
    steps = torch.randint(0, 20, (batch,), generator=g)
    flips = torch.arange(batch) % 2
    return tuple(t.to(device) for t in (a_t, s_t, ids, steps, flips))


def make_x0(batch, shape, dtype=torch.float32, layout="contiguous", device="cpu", seed=1):
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
    return strided(x, layout)


def unfused_noisy_input(x0, a_t, s_t, seed, ids, steps, flips):
    """The obvious composition, row by row: stored noise, an explicit torch.flip, the formula in float32."""
    eps = ops.gaussian_noise(seed, ids, steps, flips, x0.shape[1:], backend="reference")
    rows = [torch.flip(x0[b], dims=[-1]) if flips[b] else x0[b] for b in range(len(x0))]
    return torch.stack([a_t[b] * rows[b].float() + s_t[b] * eps[b] for b in range(len(x0))])


def assert_close_to(got, want, dtype):
    """float32 within 1e-5 relative; 16-bit outputs within one ulp of the output dtype (both round one float32)."""
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 8, 8)])
def test_reference_is_the_unfused_composition(shape):
    a_t, s_t, ids, steps, flips = make_rows(6)
    x0 = make_x0(6, shape, layout="sliced")
    got = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, backend="reference")
    assert ops.last_backend("noisy_input") == "reference"
    assert got.is_contiguous()
    assert torch.equal(got, unfused_noisy_input(x0, a_t, s_t, SEED, ids, steps, flips))


def test_reference_matches_scheduler_add_noise():
    # DiffusionModel.loss builds x_t = scheduler.add_noise(x0, noise, t); with the flip applied to x0 beforehand and
    # the noise from gaussian_noise, that is noisy_input with the model's noise_coefficients.
    from unlearn_fast.models.adapter import DiffusionModel
    from unlearn_fast.models.tiny import tiny_scheduler

    model = DiffusionModel(None, tiny_scheduler(), text=None, resolution=8)
    timesteps = torch.tensor([0, 999, 500, 17, 250])
    a_t, s_t = model.noise_coefficients(timesteps)
    _, _, ids, steps, flips = make_rows(5)
    x0 = make_x0(5, (4, 8, 8))
    eps = ops.gaussian_noise(SEED, ids, steps, flips, (4, 8, 8))
    x0_flipped = torch.where(flips.bool().view(-1, 1, 1, 1), x0.flip(-1), x0)
    want = model.scheduler.add_noise(x0_flipped, eps, timesteps)
    got = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


CPP_CASES = [(shape, layout) for shape in [(3, 5, 7), (4, 8, 8), (4, 64, 64)] for layout in LAYOUTS]


@needs_ext
@pytest.mark.parametrize("shape,layout", CPP_CASES)
@pytest.mark.parametrize("in_dtype,out_dtype", [(torch.float32, None), (torch.bfloat16, None), (torch.float16, None),
                                                (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_cpp_matches_reference(shape, layout, in_dtype, out_dtype):
    a_t, s_t, ids, steps, flips = make_rows(5)
    x0 = make_x0(5, shape, in_dtype, layout)
    got = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, out_dtype=out_dtype, backend="cpp")
    assert ops.last_backend("noisy_input") == "cpp"
    want = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, out_dtype=out_dtype, backend="reference")
    assert_close_to(got, want, out_dtype or in_dtype)


def test_triton_interpreter_matches_reference():
    # TRITON_INTERPRET=1 must be set before unlearn_fast.triton_kernels is imported: run in a fresh interpreter (see test_noise.py).
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from test_noisy_input import LAYOUTS, SEED, assert_close_to, make_rows, make_x0
        from unlearn_fast import ops
        a_t, s_t, ids, steps, flips = make_rows(4)
        for shape in ((3, 5, 7), (4, 8, 8)):
            for layout in LAYOUTS:
                for in_dtype, out_dtype in ((torch.float32, None), (torch.bfloat16, None), (torch.float16, torch.float32)):
                    x0 = make_x0(4, shape, in_dtype, layout)
                    got = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, out_dtype=out_dtype, backend="triton")
                    assert ops.last_backend("noisy_input") == "triton"
                    want = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, out_dtype=out_dtype, backend="reference")
                    assert_close_to(got, want, out_dtype or in_dtype)
        print("ok")
        """
    )
    run_under_triton_interpreter(script)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_backends_match_reference(backend, layout):
    rows = make_rows(64)
    for shape in ((3, 5, 7), (4, 64, 64)):
        for in_dtype in (torch.float32, torch.bfloat16):
            x0 = make_x0(64, shape, in_dtype, layout)
            got = ops.noisy_input(strided(x0.cuda(), layout), *(t.cuda() for t in rows[:2]), SEED,
                                  *(t.cuda() for t in rows[2:]), backend=backend)
            assert ops.last_backend("noisy_input") == backend
            want = ops.noisy_input(x0, *rows[:2], SEED, *rows[2:], backend="reference")
            assert_close_to(got.cpu(), want, in_dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rows_independent_of_batch_split_and_order(backend):
    a_t, s_t, ids, steps, flips = make_rows(9)
    x0 = make_x0(9, (3, 5, 7), layout="channels_last")
    full = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, backend=backend)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    permuted = ops.noisy_input(x0[perm], a_t[perm], s_t[perm], SEED, ids[perm], steps[perm], flips[perm], backend=backend)
    assert torch.equal(permuted, full[perm])
    chunks = [ops.noisy_input(x0[i : i + 4], a_t[i : i + 4], s_t[i : i + 4], SEED, ids[i : i + 4], steps[i : i + 4],
                              flips[i : i + 4], backend=backend) for i in range(0, 9, 4)]
    assert torch.equal(torch.cat(chunks), full)


def test_scalar_keys_broadcast_and_empty_batch():
    a_t, s_t, *_ = make_rows(3)
    x0 = make_x0(3, (2, 3, 4))
    got = ops.noisy_input(x0, a_t, s_t, 5, 7, 1, 0)
    want = ops.noisy_input(x0, a_t, s_t, 5, [7] * 3, [1] * 3, [0] * 3, backend="reference")
    assert torch.equal(got, want)
    empty = torch.zeros(0, 2, 3, 4)
    assert ops.noisy_input(empty, torch.zeros(0), torch.zeros(0), 5, [], [], []).shape == (0, 2, 3, 4)


def test_backend_is_reported():
    a_t, s_t, ids, steps, flips = make_rows(2)
    ops.noisy_input(make_x0(2, (1, 2, 3)), a_t, s_t, 0, ids, steps, flips)
    assert ops.last_backend("noisy_input") == ("cpp" if HAS_EXT else "reference")
    with pytest.raises(ops.BackendUnavailableError, match="noisy_input: backend 'cuda' is unavailable"):
        ops.noisy_input(make_x0(2, (1, 2, 3)), a_t, s_t, 0, ids, steps, flips, backend="cuda")


def _bad(**overrides):
    a_t, s_t, ids, steps, flips = make_rows(2)
    args = dict(x0=make_x0(2, (1, 2, 3)), a_t=a_t, s_t=s_t, seed=0, example_ids=ids, timestep_indices=steps, flips=flips)
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(x0=torch.zeros(2, 6)), r"x0 must have shape \(B, C, H, W\), got \(2, 6\) torch.float32"),
        (dict(x0=torch.zeros(2, 1, 2, 3, dtype=torch.float64)), "x0 must be float32, bfloat16 or float16, got torch.float64"),
        (dict(x0=[[0.0]]), "x0 must be a torch.Tensor, got list"),
        (dict(a_t=torch.ones(3)), r"a_t must be a float32 tensor of shape \(2,\) .* got \(3,\) torch.float32"),
        (dict(s_t=torch.ones(2, dtype=torch.float64)), r"s_t must be a float32 tensor .* got \(2,\) torch.float64"),
        (dict(a_t=0.5), "a_t must be a float32 tensor .* got 0.5"),
        (dict(seed=-1), "seed must be an int"),
        (dict(example_ids=[1, 2, 3]), r"example_ids must have length 2 .* got shape \(3,\)"),
        (dict(timestep_indices=[0, 2**32]), "timestep_indices must be in .* at position 1"),
        (dict(flips=[0, 2]), r"flips must be in \[0, 2\)"),
        (dict(out_dtype=torch.int32), "out_dtype must be torch.float32, torch.bfloat16 or torch.float16, got torch.int32"),
        (dict(backend="gpu"), "backend must be one of"),
    ],
)
def test_validation_errors(overrides, match):
    args = _bad(**overrides)
    with pytest.raises(ValueError, match=match):
        ops.noisy_input(args.pop("x0"), args.pop("a_t"), args.pop("s_t"), args.pop("seed"), args.pop("example_ids"),
                        args.pop("timestep_indices"), args.pop("flips"), **args)


@needs_ext
def test_binding_checks():
    C = _backend.native()
    a_t, s_t, ids, steps, flips = make_rows(2)
    x0 = make_x0(2, (1, 2, 3))
    bad_calls = [
        ((x0[0], a_t, s_t, 0, ids, steps, flips, torch.float32), r"x0 must have shape \(B, C, H, W\)"),
        ((x0.double(), a_t, s_t, 0, ids, steps, flips, torch.float32), "x0 must be float32, bfloat16 or float16, got Double"),
        ((x0, a_t.double(), s_t, 0, ids, steps, flips, torch.float32), "a_t must be float32"),
        ((x0, a_t, s_t[:1], 0, ids, steps, flips, torch.float32), r"s_t must have shape \(2,\)"),
        ((x0, a_t, s_t, 0, ids.int(), steps, flips, torch.float32), "ids must be int64"),
        ((x0, a_t, s_t, 0, ids, steps, flips.bool(), torch.float32), "flips must be int64"),
        ((x0, a_t, s_t, 0, ids, steps, flips, torch.float64), "out_dtype must be float32, bfloat16 or float16"),
    ]
    for args, match in bad_calls:
        with pytest.raises(RuntimeError, match=match):
            C.noisy_input(*args)
