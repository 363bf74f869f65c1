"""ops.linear_fisher_diag and fisher_hooks.diagonal_fisher: the reference against explicit per-example outer products,
every backend against the reference (odd sizes, several tiles and token chunks, bias on/off, 16-bit and non-contiguous
inputs), and diagonal_fisher on the tiny default model against torch.func vmap and a loop of single-example grads."""
import textwrap

import pytest
import torch
from torch.func import functional_call, grad, vmap

from ops_cases import CPU_BACKENDS, CUDA_BACKENDS, HAS_EXT, needs_ext
from unlearn_fast import ops
from unlearn_fast.engine import fisher_hooks
from unlearn_fast.engine.fisher_hooks import diagonal_fisher
from unlearn_fast.ops import _backend, linear_fisher_reference
from triton_interpreter import run_under_triton_interpreter


# (N, T, d_in, d_out): odd sizes; the default model's cross-attention K/V; several C++/CUDA tiles and token chunks.
SHAPES = [(3, 5, 7, 9), (4, 16, 64, 64), (2, 70, 130, 33)]
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny sizes: a second thread only waits


def strided(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x (N, T, D) with the same values in a non-contiguous memory layout (or contiguous)."""
    if layout == "contiguous":
        return x.clone()
    if layout == "transposed":  # stored (N, D, T)
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "sliced":  # every other token and feature of a bigger tensor, with a storage offset
        big = torch.zeros(x.shape[0], 2 * x.shape[1], 2 * x.shape[2] + 1, dtype=x.dtype)
        big[:, ::2, 1::2] = x
        return big[:, ::2, 1::2]
    if layout == "expanded":  # every example the same tokens: stride 0 along N
        return x[:1].expand_as(x)
    raise ValueError(layout)


def make_xg(n, t, d_in, d_out, dtype=torch.float32, layouts=("contiguous", "contiguous"), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d_in, generator=gen).to(dtype)
    g = torch.randn(n, t, d_out, generator=gen).to(dtype)
    return strided(x, layouts[0]), strided(g, layouts[1])


def assert_fisher_close(got, want, rtol=1e-5):
    """Elementwise rtol, plus an absolute slack of rtol x the largest entry: an entry is a square of a sum over tokens
    that may cancel, and near-zero squares carry the rounding of the big terms that cancelled."""
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want.float(), rtol=rtol, atol=rtol * want.abs().max().item())


def assert_backend_matches_reference(x, g, bias, backend, rtol=1e-5, device="cpu"):
    """linear_fisher_diag on `backend` (inputs moved to `device`) against the reference on the CPU inputs."""
    got = ops.linear_fisher_diag(x.to(device), g.to(device), bias=bias, backend=backend)
    assert ops.last_backend("linear_fisher_diag") == backend
    want = ops.linear_fisher_diag(x, g, bias=bias, backend="reference")
    assert (got[1] is None) == (not bias)
    assert_fisher_close(got[0].cpu(), want[0], rtol)
    if bias:
        assert_fisher_close(got[1].cpu(), want[1], rtol)


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_sum_of_per_example_outer_products(shape, monkeypatch):
    monkeypatch.setattr(linear_fisher_reference, "CHUNK_BYTES", 4 * shape[2] * shape[3])  # one example per chunk
    x, g = make_xg(*shape)
    weight_sq, bias_sq = ops.linear_fisher_diag(x, g, bias=True, backend="reference")
    want_w, want_b = torch.zeros(shape[3], shape[2], dtype=torch.float64), torch.zeros(shape[3], dtype=torch.float64)
    for n in range(shape[0]):
        grad_w = sum(torch.outer(g[n, t].double(), x[n, t].double()) for t in range(shape[1]))
        want_w += grad_w.square()
        want_b += g[n].double().sum(0).square()
    assert_fisher_close(weight_sq, want_w)
    assert_fisher_close(bias_sq, want_b)
    assert ops.linear_fisher_diag(x, g, backend="reference")[1] is None


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_matches_reference(shape, dtype):
    # 16-bit inputs are exact in float32 and both sides multiply in float32: one bound for every dtype.
    for x_layout, g_layout in zip(LAYOUTS, LAYOUTS[1:] + LAYOUTS[:1]):
        x, g = make_xg(*shape, dtype, (x_layout, g_layout))
        for bias in (False, True):
            assert_backend_matches_reference(x, g, bias, "cpp")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_additive_over_batch_split(backend):
    x, g = make_xg(7, 9, 20, 18, layouts=("sliced", "transposed"))
    whole = ops.linear_fisher_diag(x, g, bias=True, backend=backend)
    halves = [ops.linear_fisher_diag(x[s], g[s], bias=True, backend=backend) for s in (slice(0, 3), slice(3, None))]
    for i in range(2):
        assert_fisher_close(halves[0][i] + halves[1][i], whole[i], rtol=1e-6)


@needs_ext
def test_cpp_is_deterministic_across_thread_counts():
    x, g = make_xg(5, 40, 130, 70)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.linear_fisher_diag(x, g, bias=True, backend="cpp")
        torch.set_num_threads(2)
        two = ops.linear_fisher_diag(x, g, bias=True, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_triton_interpreter_matches_reference():
    # TRITON_INTERPRET=1 must be set before unlearn_fast.triton_kernels is imported: run in a fresh interpreter (see test_noise.py).
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from test_linear_fisher import DTYPES, LAYOUTS, assert_backend_matches_reference, make_xg
        for shape in ((3, 5, 7, 9), (2, 20, 40, 33)):
            for dtype in DTYPES:
                for layouts in zip(LAYOUTS, LAYOUTS[1:] + LAYOUTS[:1]):
                    x, g = make_xg(*shape, dtype, layouts)
                    assert_backend_matches_reference(x, g, layouts[0] != "contiguous", "triton")
        print("ok")
        """
    )
    run_under_triton_interpreter(script)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_backends_match_reference(backend, dtype):
    for shape in SHAPES + [(64, 77, 1024, 320)]:  # the last: a K/V projection of the paper's MSCOCO UNet
        for layouts in zip(LAYOUTS, LAYOUTS[1:] + LAYOUTS[:1]):
            x, g = make_xg(*shape, dtype, layouts)
            # rtol 1e-4: float32 sums over up to 64 examples
            assert_backend_matches_reference(x, g, True, backend, rtol=1e-4, device="cuda")


@pytest.mark.parametrize(
    "x,g,match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), r"x must be a float32, bfloat16 or float16 tensor of shape \(N, T, d\)"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 5, dtype=torch.float64), "g must be a float32, bfloat16 or float16"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4, 5), r"x and g must share \(N, T\)"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 5, dtype=torch.bfloat16), "x and g must have one dtype and device"),
        (torch.zeros(2, 3, 0), torch.zeros(2, 3, 5), "d_in must be >= 1"),
    ],
)
def test_validation_errors(x, g, match):
    with pytest.raises(ValueError, match=match):
        ops.linear_fisher_diag(x, g)


@needs_ext
def test_binding_checks():
    C = _backend.native()
    for x, g, match in [(torch.zeros(2, 3, 4), torch.zeros(2, 4, 5), r"must have shapes \(N, T, d_in\)"),
                        (torch.zeros(2, 3, 4).double(), torch.zeros(2, 3, 5).double(), "must be float32, bfloat16"),
                        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 5).half(), "x and g must have one dtype")]:
        with pytest.raises(RuntimeError, match=match):
            C.linear_fisher_diag(x, g, True)


def test_empty_batch_gives_zeros():
    x, g = make_xg(0, 3, 4, 5)
    for backend in CPU_BACKENDS:
        weight_sq, bias_sq = ops.linear_fisher_diag(x, g, bias=True, backend=backend)
        assert torch.equal(weight_sq, torch.zeros(5, 4)) and torch.equal(bias_sq, torch.zeros(5))


# ------------------------------------------------------------------------------------- diagonal_fisher on a model
BATCH = 4
# A GroupNorm weight (not Linear: the vmap fallback) and a Linear bias (the hooks' bias path) beside the K/V weights.
MIXED = (r"\.attn2\.to_[kv]\.weight$|down_blocks\.0\.resnets\.0\.norm1\.weight$"
         r"|up_blocks\.1\.attentions\.0\.transformer_blocks\.0\.ff\.net\.2\.bias$")


@pytest.fixture(scope="module")
def model_batch():
    from diffusers.models.attention_processor import AttnProcessor

    from unlearn_fast.models.tiny import new_tiny_model

    torch.manual_seed(0)
    model = new_tiny_model(["red apple", "cat face"]).eval()
    model.unet.set_attn_processor(AttnProcessor())  # SDPA has no vmap batching rule on CPU: 5x slower under vmap
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(BATCH, *model.latent_shape, generator=gen)
    cond = model.encode_text(["red apple", "cat face", "red face", "apple"])
    timesteps = torch.tensor([3, 250, 640, 999])
    noise = torch.randn(BATCH, *model.latent_shape, generator=gen)
    return model, (x0, cond, timesteps, noise)


def loop_fisher(model, params, batch):
    """Σ_n (∂L_n/∂θ)² from one torch.autograd.grad call per example."""
    out = {name: torch.zeros_like(p) for name, p in params.items()}
    for n in range(BATCH):
        loss = model.loss(*(t[n:n + 1] for t in batch))[0]
        for name, grad_n in zip(params, torch.autograd.grad(loss, list(params.values()))):
            out[name] += grad_n.square()
    return out


def vmap_fisher(model, params, batch):
    """Σ_n (∂L_n/∂θ)² from torch.func per-example gradients of every selected parameter."""
    def loss_one(selected, *row):
        unet = lambda *args, **kwargs: functional_call(model.unet, selected, args, kwargs)  # noqa: E731
        return model.loss(*(t[None] for t in row), unet=unet)[0]

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0))({n: p.detach() for n, p in params.items()}, *batch)
    return {name: g.square().sum(0) for name, g in grads.items()}


def test_diagonal_fisher_kv_matches_vmap_and_single_example_loop(model_batch):
    model, batch = model_batch
    kv = model.parameter_group("kv")
    got = diagonal_fisher(model, kv, *batch)
    assert ops.last_backend("linear_fisher_diag") == ("cpp" if HAS_EXT else "reference")
    assert list(got) == list(kv) and len(kv) == 14
    for want in (vmap_fisher(model, kv, batch), loop_fisher(model, kv, batch)):
        for name in kv:
            assert_fisher_close(got[name], want[name], rtol=1e-4)
    assert all(p.requires_grad for p in model.unet.parameters())  # restored


def test_diagonal_fisher_non_linear_parameters_take_the_vmap_path(model_batch, monkeypatch):
    model, batch = model_batch
    params = model.parameter_group(MIXED)
    vmapped = []
    vmap_path = fisher_hooks._vmap_fisher
    monkeypatch.setattr(fisher_hooks, "_vmap_fisher", lambda m, p, *a: vmapped.extend(p) or vmap_path(m, p, *a))
    got = diagonal_fisher(model, params, *batch, backend="reference")
    assert ops.last_backend("linear_fisher_diag") == "reference"
    assert vmapped == ["down_blocks.0.resnets.0.norm1.weight"]
    want = loop_fisher(model, params, batch)
    for name in params:
        assert_fisher_close(got[name], want[name], rtol=1e-4)


def test_diagonal_fisher_is_additive_over_batch_split(model_batch):
    model, batch = model_batch
    params = model.parameter_group(MIXED)
    with torch.no_grad():  # the caller's grad mode does not matter
        whole = diagonal_fisher(model, params, *batch)
    halves = [diagonal_fisher(model, params, *(t[s] for t in batch)) for s in (slice(0, 1), slice(1, None))]
    for name in params:
        assert_fisher_close(halves[0][name] + halves[1][name], whole[name], rtol=1e-4)
