"""ops.denoising_loss: the reference against the unfused composition and DiffusionModel.loss, every backend against the
reference (both prediction types, odd sizes, flips, non-contiguous and 16-bit inputs), batch invariance, validation."""
import textwrap
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ops_cases import CPU_BACKENDS, CUDA_BACKENDS, HAS_EXT, needs_ext
from test_noisy_input import LAYOUTS, SEED, make_rows, make_x0, strided
from unlearn_fast import ops
from unlearn_fast.ops import _backend
from triton_interpreter import run_under_triton_interpreter

PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_pred(batch, shape, dtype=torch.float32, layout="contiguous"):
    return make_x0(batch, shape, dtype, layout, seed=2)


def unfused_loss(pred, x0, a_t, s_t, seed, ids, steps, flips, prediction_type):
    """The unfused path: stored noise, an explicit torch.flip per row, the target formula, a float64 mean."""
    eps = ops.gaussian_noise(seed, ids, steps, flips, x0.shape[1:], backend="reference").double()
    losses = []
    for b in range(len(x0)):
        x = (torch.flip(x0[b], dims=[-1]) if flips[b] else x0[b]).double()
        target = eps[b] if prediction_type == "epsilon" else a_t[b].double() * eps[b] - s_t[b].double() * x
        losses.append((pred[b].double() - target).pow(2).mean())
    return torch.stack(losses).float()


def assert_losses_close(got, want):
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 8, 8)])
def test_reference_is_the_unfused_composition(prediction_type, shape):
    a_t, s_t, ids, steps, flips = make_rows(6)
    x0, pred = make_x0(6, shape, layout="sliced"), make_pred(6, shape, layout="transposed")
    got = ops.denoising_loss(pred, x0, a_t, s_t, SEED, ids, steps, flips, prediction_type=prediction_type,
                             backend="reference")
    assert_losses_close(got, unfused_loss(pred, x0, a_t, s_t, SEED, ids, steps, flips, prediction_type))


class RecordingUNet(nn.Module):
    """Returns a fixed prediction and records the x_t it was given."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x_t, timesteps, encoder_hidden_states):
        self.x_t = x_t
        return SimpleNamespace(sample=self.pred)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_matches_diffusion_model_loss(prediction_type):
    # DiffusionModel.loss(flip(x0), c, t, eps) with eps = gaussian_noise(...) is exactly what the fused pair computes:
    # its unet sees noisy_input(x0, ...) and its loss is denoising_loss(pred, x0, ...).
    from diffusers import DDPMScheduler

    from unlearn_fast.models.adapter import DiffusionModel

    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False)
    model = DiffusionModel(None, scheduler, text=None, resolution=8)
    timesteps = torch.tensor([0, 999, 500, 17, 250, 640])
    a_t, s_t = model.noise_coefficients(timesteps)
    _, _, ids, steps, flips = make_rows(6)
    x0, pred = make_x0(6, (4, 8, 8)), make_pred(6, (4, 8, 8))
    eps = ops.gaussian_noise(SEED, ids, steps, flips, (4, 8, 8))
    unet = RecordingUNet(pred)
    want = model.loss(torch.where(flips.bool().view(-1, 1, 1, 1), x0.flip(-1), x0), None, timesteps, eps, unet=unet)
    args = (x0, a_t, s_t, SEED, ids, steps, flips)
    torch.testing.assert_close(ops.noisy_input(*args, backend="reference"), unet.x_t, rtol=1e-5, atol=1e-6)
    got = ops.denoising_loss(pred, *args, prediction_type=model.prediction_type, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


CPP_CASES = [(shape, layout) for shape in [(3, 5, 7), (4, 8, 8), (4, 64, 64)] for layout in LAYOUTS]


@needs_ext
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("shape,layout", CPP_CASES)
@pytest.mark.parametrize("pred_dtype,x0_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                 (torch.float16, torch.bfloat16)])
def test_cpp_matches_reference(prediction_type, shape, layout, pred_dtype, x0_dtype):
    # 16-bit inputs are exact in float32, so every dtype pair is held to the float32 bound.
    a_t, s_t, ids, steps, flips = make_rows(5)
    pred_layout = LAYOUTS[(LAYOUTS.index(layout) + 1) % len(LAYOUTS)]  # pred and x0 with different strides
    x0, pred = make_x0(5, shape, x0_dtype, layout), make_pred(5, shape, pred_dtype, pred_layout)
    args = (pred, x0, a_t, s_t, SEED, ids, steps, flips)
    got = ops.denoising_loss(*args, prediction_type=prediction_type, backend="cpp")
    assert ops.last_backend("denoising_loss") == "cpp"
    assert_losses_close(got, ops.denoising_loss(*args, prediction_type=prediction_type, backend="reference"))


def test_triton_interpreter_matches_reference():
    # TRITON_INTERPRET=1 must be set before triton_kernels is imported: run in a fresh interpreter (see test_noise.py).
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from test_denoising_loss import LAYOUTS, PREDICTION_TYPES, SEED, assert_losses_close, make_pred, make_rows, make_x0
        from unlearn_fast import ops
        a_t, s_t, ids, steps, flips = make_rows(4)
        for shape in ((3, 5, 7), (4, 8, 8)):
            for layout in LAYOUTS:
                for pred_dtype in (torch.float32, torch.bfloat16):
                    x0, pred = make_x0(4, shape, torch.float32, layout), make_pred(4, shape, pred_dtype, layout)
                    for prediction_type in PREDICTION_TYPES:
                        args = (pred, x0, a_t, s_t, SEED, ids, steps, flips)
                        got = ops.denoising_loss(*args, prediction_type=prediction_type, backend="triton")
                        assert ops.last_backend("denoising_loss") == "triton"
                        want = ops.denoising_loss(*args, prediction_type=prediction_type, backend="reference")
                        assert_losses_close(got, want)
        print("ok")
        """
    )
    run_under_triton_interpreter(script)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_backends_match_reference(backend, layout):
    rows = make_rows(64)
    for shape in ((3, 5, 7), (4, 64, 64)):
        x0, pred = make_x0(64, shape, torch.float32, layout), make_pred(64, shape, torch.bfloat16, layout)
        for prediction_type in PREDICTION_TYPES:
            got = ops.denoising_loss(strided(pred.cuda(), layout), strided(x0.cuda(), layout),
                                     *(t.cuda() for t in rows[:2]), SEED, *(t.cuda() for t in rows[2:]),
                                     prediction_type=prediction_type, backend=backend)
            assert ops.last_backend("denoising_loss") == backend
            want = ops.denoising_loss(pred, x0, *rows[:2], SEED, *rows[2:], prediction_type=prediction_type,
                                      backend="reference")
            assert_losses_close(got.cpu(), want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_rows_independent_of_batch_split_and_order(backend, prediction_type):
    # Bit-identical for the native backends; the reference's float32 mean may be vectorised differently per batch.
    a_t, s_t, ids, steps, flips = make_rows(9)
    x0, pred = make_x0(9, (4, 33, 31), layout="channels_last"), make_pred(9, (4, 33, 31))  # spans C++ tiles

    def loss(rows):
        return ops.denoising_loss(pred[rows], x0[rows], a_t[rows], s_t[rows], SEED, ids[rows], steps[rows],
                                  flips[rows], prediction_type=prediction_type, backend=backend)

    same = torch.equal if backend != "reference" else lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=0)
    full = loss(slice(None))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    assert same(loss(perm), full[perm])
    assert same(torch.cat([loss(slice(i, i + 4)) for i in range(0, 9, 4)]), full)


def test_scalar_keys_and_empty_batch():
    a_t, s_t, *_ = make_rows(3)
    x0, pred = make_x0(3, (2, 3, 4)), make_pred(3, (2, 3, 4))
    want = ops.denoising_loss(pred, x0, a_t, s_t, 5, [7] * 3, [1] * 3, [1] * 3, backend="reference")
    assert torch.equal(ops.denoising_loss(pred, x0, a_t, s_t, 5, 7, 1, 1, backend="reference"), want)
    empty = torch.zeros(0, 2, 3, 4)
    assert ops.denoising_loss(empty, empty, torch.zeros(0), torch.zeros(0), 5, [], [], []).shape == (0,)


def test_backend_is_reported():
    a_t, s_t, ids, steps, flips = make_rows(2)
    x0 = make_x0(2, (1, 2, 3))
    ops.denoising_loss(x0, x0, a_t, s_t, 0, ids, steps, flips)
    assert ops.last_backend("denoising_loss") == ("cpp" if HAS_EXT else "reference")
    ops.denoising_loss(x0, x0, a_t, s_t, 0, ids, steps, flips, backend="reference")
    assert ops.last_backend("denoising_loss") == "reference"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(pred=torch.zeros(2, 1, 3, 2)), r"pred must have shape \(2, 1, 2, 3\), got \(2, 1, 3, 2\) torch.float32"),
        (dict(pred=torch.zeros(2, 1, 2, 3, dtype=torch.float64)), "pred must be float32, bfloat16 or float16, got torch.float64"),
        (dict(x0=torch.zeros(2, 1, 2, 3, dtype=torch.int64)), "x0 must be float32, bfloat16 or float16"),
        (dict(pred=torch.zeros(2, 0, 2, 3), x0=torch.zeros(2, 0, 2, 3)), "samples must not be empty"),
        (dict(a_t=torch.ones(2, 1)), r"a_t must be a float32 tensor of shape \(2,\)"),
        (dict(example_ids=[1]), "example_ids must have length 2"),
        (dict(prediction_type="sample"), "prediction_type must be one of .*'epsilon', 'v_prediction'.*got 'sample'"),
        (dict(backend="tpu"), "backend must be one of"),
    ],
)
def test_validation_errors(overrides, match):
    a_t, s_t, ids, steps, flips = make_rows(2)
    args = dict(pred=make_pred(2, (1, 2, 3)), x0=make_x0(2, (1, 2, 3)), a_t=a_t, s_t=s_t, seed=0, example_ids=ids,
                timestep_indices=steps, flips=flips)
    args.update(overrides)
    positional = [args.pop(k) for k in ("pred", "x0", "a_t", "s_t", "seed", "example_ids", "timestep_indices", "flips")]
    with pytest.raises(ValueError, match=match):
        ops.denoising_loss(*positional, **args)


@needs_ext
def test_binding_checks():
    C = _backend.native()
    a_t, s_t, ids, steps, flips = make_rows(2)
    x0 = make_x0(2, (1, 2, 3))
    bad_calls = [
        ((x0[:1], x0, a_t, s_t, 0, ids, steps, flips, False), r"pred must have x0's shape \[2, 1, 2, 3\]"),
        ((x0.double(), x0, a_t, s_t, 0, ids, steps, flips, False), "pred must be float32, bfloat16 or float16"),
        ((x0, x0, a_t, s_t, 0, ids[:1], steps, flips, True), r"ids must have shape \(2,\)"),
        ((x0, x0, a_t, s_t.half(), 0, ids, steps, flips, True), "s_t must be float32"),
        ((x0[:, :0], x0[:, :0], a_t, s_t, 0, ids, steps, flips, True), "samples must not be empty"),
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
        ops.denoising_loss(x0, x0, a_t, s_t, 0, ids, steps, flips)
    assert ops.last_backend("denoising_loss") == "reference"
    ops.noisy_input(x0, a_t, s_t, 0, ids, steps, flips)
    assert ops.last_backend("noisy_input") == "reference"
