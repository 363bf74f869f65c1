"""ops.denoising_loss: the reference against the unfused composition and diffusers' own targets, every backend against
the reference (several kinds of target coefficients, odd sizes, flips, non-contiguous and 16-bit inputs), batch
invariance, validation."""
import textwrap

import pytest
import torch

from ops_cases import CPU_BACKENDS, CUDA_BACKENDS, HAS_EXT, needs_ext
from test_noisy_input import LAYOUTS, SEED, make_rows, make_x0, strided
from unlearn_fast import ops
from unlearn_fast.ops import _backend
from triton_interpreter import run_under_triton_interpreter

# (c_eps, c_x): epsilon (1, 0), v-prediction (a_t, -s_t), flow matching (1, -1), and arbitrary per-row values.
COEFFICIENT_KINDS = ("epsilon", "v", "flow", "random")


def coefficients(kind, a_t, s_t):
    """(c_eps, c_x), float32 (B,) on a_t's device."""
    ones, zeros = torch.ones_like(a_t), torch.zeros_like(a_t)
    if kind == "epsilon":
        return ones, zeros
    if kind == "v":
        return a_t, -s_t
    if kind == "flow":
        return ones, -ones
    if kind == "random":
        g = torch.Generator().manual_seed(len(a_t))
        return tuple((2 * torch.randn(2, len(a_t), generator=g)).to(a_t.device).unbind())
    raise ValueError(kind)


def make_pred(batch, shape, dtype=torch.float32, layout="contiguous"):
    return make_x0(batch, shape, dtype, layout, seed=2)


def unfused_loss(pred, x0, c_eps, c_x, seed, ids, steps, flips):
    """The unfused path: stored noise, an explicit torch.flip per row, the target formula, a float64 mean."""
    eps = ops.gaussian_noise(seed, ids, steps, flips, x0.shape[1:], backend="reference").double()
    losses = []
    for b in range(len(x0)):
        x = (torch.flip(x0[b], dims=[-1]) if flips[b] else x0[b]).double()
        target = c_eps[b].double() * eps[b] + c_x[b].double() * x
        losses.append((pred[b].double() - target).pow(2).mean())
    return torch.stack(losses).float()


def assert_losses_close(got, want):
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind", COEFFICIENT_KINDS)
@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 8, 8)])
def test_reference_is_the_unfused_composition(kind, shape):
    a_t, s_t, ids, steps, flips = make_rows(6)
    c_eps, c_x = coefficients(kind, a_t, s_t)
    x0, pred = make_x0(6, shape, layout="sliced"), make_pred(6, shape, layout="transposed")
    got = ops.denoising_loss(pred, x0, c_eps, c_x, SEED, ids, steps, flips, backend="reference")
    assert_losses_close(got, unfused_loss(pred, x0, c_eps, c_x, SEED, ids, steps, flips))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_epsilon_coefficients_score_against_the_noise_exactly(backend):
    # (1, 0) makes the target exactly eps, whatever x0 holds: the loss has the bits of mean((pred - eps)^2) computed
    # the backend's way, here checked against a second call with x0 scaled (any finite x0 gives the same bits).
    a_t, s_t, ids, steps, flips = make_rows(5)
    x0, pred = make_x0(5, (4, 33, 31)), make_pred(5, (4, 33, 31), torch.bfloat16)
    c_eps, c_x = coefficients("epsilon", a_t, s_t)
    got = ops.denoising_loss(pred, x0, c_eps, c_x, SEED, ids, steps, flips, backend=backend)
    assert torch.equal(got, ops.denoising_loss(pred, 1e30 * x0, c_eps, c_x, SEED, ids, steps, flips, backend=backend))
    if backend == "reference":
        eps = ops.gaussian_noise(SEED, ids, steps, flips, x0.shape[1:], backend="reference").view(x0.shape)
        assert torch.equal(got, (pred.float() - eps).pow(2).flatten(1).mean(1))


def _diffusers_case():
    """Rows with mixed timesteps and flips: (x0, pred, x0', eps, ids, steps, flips)."""
    _, _, ids, steps, flips = make_rows(6)
    x0, pred = make_x0(6, (4, 8, 8)), make_pred(6, (4, 8, 8))
    mirrored = torch.where(flips.bool().view(-1, 1, 1, 1), x0.flip(-1), x0)
    eps = ops.gaussian_noise(SEED, ids, steps, flips, (4, 8, 8))
    return x0, pred, mirrored, eps, ids, steps, flips


def _assert_fused_pair_matches(x0, pred, a_t, s_t, c_eps, c_x, keys, want_x_t, target):
    want = (pred.double() - target.double()).pow(2).flatten(1).mean(1).float()
    for backend in CPU_BACKENDS:
        torch.testing.assert_close(ops.noisy_input(x0, a_t, s_t, *keys, backend=backend), want_x_t, rtol=1e-5,
                                   atol=1e-6)
        assert_losses_close(ops.denoising_loss(pred, x0, c_eps, c_x, *keys, backend=backend), want)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_matches_diffusers_ddpm_targets(prediction_type):
    # x_t = scheduler.add_noise(x0', eps, t) is noisy_input with (sqrt(abar), sqrt(1 - abar)); the target (eps, or
    # scheduler.get_velocity) is c_eps * eps + c_x * x0' with (1, 0), or (sqrt(abar), -sqrt(1 - abar)).
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False)
    timesteps = torch.tensor([0, 999, 500, 17, 250, 640])
    abar = scheduler.alphas_cumprod[timesteps]
    a_t, s_t = abar**0.5, (1 - abar) ** 0.5  # float32, as diffusers computes them
    x0, pred, mirrored, eps, ids, steps, flips = _diffusers_case()
    want_x_t = scheduler.add_noise(mirrored, eps, timesteps)
    if prediction_type == "epsilon":
        target, (c_eps, c_x) = eps, (torch.ones(6), torch.zeros(6))
    else:
        target, (c_eps, c_x) = scheduler.get_velocity(mirrored, eps, timesteps), (a_t, -s_t)
    _assert_fused_pair_matches(x0, pred, a_t, s_t, c_eps, c_x, (SEED, ids, steps, flips), want_x_t, target)


def test_matches_diffusers_flow_matching_target():
    # FlowMatchEulerDiscreteScheduler's training convention: x_t = scale_noise(x0', t, eps) = (1 - sigma) x0' +
    # sigma eps, the target (velocity) eps - x0', so (c_eps, c_x) = (1, -1).
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    indices = torch.tensor([0, 999, 500, 17, 250, 640])
    timesteps, sigmas = scheduler.timesteps[indices], scheduler.sigmas[indices].float()
    x0, pred, mirrored, eps, ids, steps, flips = _diffusers_case()
    want_x_t = scheduler.scale_noise(mirrored, timesteps, eps)
    target = eps - mirrored
    _assert_fused_pair_matches(x0, pred, 1 - sigmas, sigmas, torch.ones(6), -torch.ones(6),
                               (SEED, ids, steps, flips), want_x_t, target)


CPP_CASES = [(shape, layout) for shape in [(3, 5, 7), (4, 8, 8), (4, 64, 64)] for layout in LAYOUTS]


@needs_ext
@pytest.mark.parametrize("kind", COEFFICIENT_KINDS)
@pytest.mark.parametrize("shape,layout", CPP_CASES)
@pytest.mark.parametrize("pred_dtype,x0_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                 (torch.float16, torch.bfloat16)])
def test_cpp_matches_reference(kind, shape, layout, pred_dtype, x0_dtype):
    # 16-bit inputs are exact in float32, so every dtype pair is held to the float32 bound.
    a_t, s_t, ids, steps, flips = make_rows(5)
    pred_layout = LAYOUTS[(LAYOUTS.index(layout) + 1) % len(LAYOUTS)]  # pred and x0 with different strides
    x0, pred = make_x0(5, shape, x0_dtype, layout), make_pred(5, shape, pred_dtype, pred_layout)
    args = (pred, x0, *coefficients(kind, a_t, s_t), SEED, ids, steps, flips)
    got = ops.denoising_loss(*args, backend="cpp")
    assert ops.last_backend("denoising_loss") == "cpp"
    assert_losses_close(got, ops.denoising_loss(*args, backend="reference"))


def test_triton_interpreter_matches_reference():
    # TRITON_INTERPRET=1 must be set before unlearn_fast.triton_kernels is imported: run in a fresh interpreter (see test_noise.py).
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from test_denoising_loss import (COEFFICIENT_KINDS, LAYOUTS, SEED, assert_losses_close, coefficients,
                                         make_pred, make_rows, make_x0)
        from unlearn_fast import ops
        a_t, s_t, ids, steps, flips = make_rows(4)
        for shape in ((3, 5, 7), (4, 8, 8)):
            for layout in LAYOUTS:
                for pred_dtype in (torch.float32, torch.bfloat16):
                    x0, pred = make_x0(4, shape, torch.float32, layout), make_pred(4, shape, pred_dtype, layout)
                    for kind in COEFFICIENT_KINDS:
                        args = (pred, x0, *coefficients(kind, a_t, s_t), SEED, ids, steps, flips)
                        got = ops.denoising_loss(*args, backend="triton")
                        assert ops.last_backend("denoising_loss") == "triton"
                        assert_losses_close(got, ops.denoising_loss(*args, backend="reference"))
        print("ok")
        """
    )
    run_under_triton_interpreter(script)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_backends_match_reference(backend, layout):
    a_t, s_t, *keys = make_rows(64)
    for shape in ((3, 5, 7), (4, 64, 64)):
        x0, pred = make_x0(64, shape, torch.float32, layout), make_pred(64, shape, torch.bfloat16, layout)
        for kind in COEFFICIENT_KINDS:
            c_eps, c_x = coefficients(kind, a_t, s_t)
            got = ops.denoising_loss(strided(pred.cuda(), layout), strided(x0.cuda(), layout), c_eps.cuda(),
                                     c_x.cuda(), SEED, *(t.cuda() for t in keys), backend=backend)
            assert ops.last_backend("denoising_loss") == backend
            want = ops.denoising_loss(pred, x0, c_eps, c_x, SEED, *keys, backend="reference")
            assert_losses_close(got.cpu(), want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", COEFFICIENT_KINDS)
def test_rows_independent_of_batch_split_and_order(backend, kind):
    # Bit-identical for the native backends; the reference's float32 mean may be vectorised differently per batch.
    a_t, s_t, ids, steps, flips = make_rows(9)
    c_eps, c_x = coefficients(kind, a_t, s_t)
    x0, pred = make_x0(9, (4, 33, 31), layout="channels_last"), make_pred(9, (4, 33, 31))  # spans C++ tiles

    def loss(rows):
        return ops.denoising_loss(pred[rows], x0[rows], c_eps[rows], c_x[rows], SEED, ids[rows], steps[rows],
                                  flips[rows], backend=backend)

    same = torch.equal if backend != "reference" else lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=0)
    full = loss(slice(None))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    assert same(loss(perm), full[perm])
    assert same(torch.cat([loss(slice(i, i + 4)) for i in range(0, 9, 4)]), full)


def test_scalar_keys_and_empty_batch():
    a_t, s_t, *_ = make_rows(3)
    c_eps, c_x = coefficients("v", a_t, s_t)
    x0, pred = make_x0(3, (2, 3, 4)), make_pred(3, (2, 3, 4))
    want = ops.denoising_loss(pred, x0, c_eps, c_x, 5, [7] * 3, [1] * 3, [1] * 3, backend="reference")
    assert torch.equal(ops.denoising_loss(pred, x0, c_eps, c_x, 5, 7, 1, 1, backend="reference"), want)
    empty = torch.zeros(0, 2, 3, 4)
    assert ops.denoising_loss(empty, empty, torch.zeros(0), torch.zeros(0), 5, [], [], []).shape == (0,)


def test_backend_is_reported():
    a_t, s_t, ids, steps, flips = make_rows(2)
    x0 = make_x0(2, (1, 2, 3))
    ops.denoising_loss(x0, x0, a_t, -s_t, 0, ids, steps, flips)
    assert ops.last_backend("denoising_loss") == ("cpp" if HAS_EXT else "reference")
    ops.denoising_loss(x0, x0, a_t, -s_t, 0, ids, steps, flips, backend="reference")
    assert ops.last_backend("denoising_loss") == "reference"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(pred=torch.zeros(2, 1, 3, 2)), r"pred must have shape \(2, 1, 2, 3\), got \(2, 1, 3, 2\) torch.float32"),
        (dict(pred=torch.zeros(2, 1, 2, 3, dtype=torch.float64)), "pred must be float32, bfloat16 or float16, got torch.float64"),
        (dict(x0=torch.zeros(2, 1, 2, 3, dtype=torch.int64)), "x0 must be float32, bfloat16 or float16"),
        (dict(pred=torch.zeros(2, 0, 2, 3), x0=torch.zeros(2, 0, 2, 3)), "samples must not be empty"),
        (dict(c_eps=torch.ones(2, 1)), r"^c_eps must be a float32 tensor of shape \(2,\) \(one per row of x0\), got "
                                       r"\(2, 1\) torch.float32$"),
        (dict(c_eps=torch.ones(3)), r"^c_eps must be a float32 tensor of shape \(2,\).*got \(3,\) torch.float32$"),
        (dict(c_x=torch.zeros(2, dtype=torch.float64)), r"^c_x must be a float32 tensor of shape \(2,\).*got \(2,\) "
                                                        r"torch.float64$"),
        (dict(c_x=0.0), r"^c_x must be a float32 tensor of shape \(2,\).*got 0.0$"),
        (dict(example_ids=[1]), "example_ids must have length 2"),
        (dict(backend="tpu"), "backend must be one of"),
    ],
)
def test_validation_errors(overrides, match):
    a_t, s_t, ids, steps, flips = make_rows(2)
    args = dict(pred=make_pred(2, (1, 2, 3)), x0=make_x0(2, (1, 2, 3)), c_eps=a_t, c_x=-s_t, seed=0, example_ids=ids,
                timestep_indices=steps, flips=flips)
    args.update(overrides)
    positional = [args.pop(k) for k in ("pred", "x0", "c_eps", "c_x", "seed", "example_ids", "timestep_indices",
                                        "flips")]
    with pytest.raises(ValueError, match=match):
        ops.denoising_loss(*positional, **args)


def test_prediction_type_is_not_an_argument():
    # The caller states the target by its coefficients; a prediction-type flag would be a second, conflicting source.
    a_t, s_t, ids, steps, flips = make_rows(2)
    x0 = make_x0(2, (1, 2, 3))
    with pytest.raises(TypeError, match="prediction_type"):
        ops.denoising_loss(x0, x0, a_t, -s_t, 0, ids, steps, flips, prediction_type="v_prediction")


@needs_ext
def test_binding_checks():
    C = _backend.native()
    a_t, s_t, ids, steps, flips = make_rows(2)
    x0 = make_x0(2, (1, 2, 3))
    bad_calls = [
        ((x0[:1], x0, a_t, s_t, 0, ids, steps, flips), r"pred must have x0's shape \[2, 1, 2, 3\]"),
        ((x0.double(), x0, a_t, s_t, 0, ids, steps, flips), "pred must be float32, bfloat16 or float16"),
        ((x0, x0, a_t, s_t, 0, ids[:1], steps, flips), r"ids must have shape \(2,\)"),
        ((x0, x0, a_t[:1], s_t, 0, ids, steps, flips), r"c_eps must have shape \(2,\) like x0's batch, got \[1\]"),
        ((x0, x0, a_t, s_t.half(), 0, ids, steps, flips), "c_x must be float32, got Half"),
        ((x0[:, :0], x0[:, :0], a_t, s_t, 0, ids, steps, flips), "samples must not be empty"),
    ]
    for args, match in bad_calls:
        with pytest.raises(RuntimeError, match=match):
            C.denoising_loss(*args)


def test_works_without_extension(monkeypatch):
    def missing():
        raise ImportError("simulated: no module named unlearn_fast._C")

    monkeypatch.setattr(_backend, "_import_extension", missing)
    monkeypatch.setattr(_backend, "_extension", _backend._NOT_LOADED)
    a_t, s_t, ids, steps, flips = make_rows(2)
    x0 = make_x0(2, (1, 2, 3))
    with pytest.warns(UserWarning, match="native extension unavailable"):
        ops.denoising_loss(x0, x0, a_t, -s_t, 0, ids, steps, flips)
    assert ops.last_backend("denoising_loss") == "reference"
    ops.noisy_input(x0, a_t, s_t, 0, ids, steps, flips)
    assert ops.last_backend("noisy_input") == "reference"
