"""torch.compile traces through every fused op (torch.library custom ops with fake implementations): one graph, no
break, and the compiled result has the eager bits."""
import pytest
import torch

from unlearn_fast import ops
from ops_cases import CPU_BACKENDS

SEED = 2**64 - 5  # above 2**63: crosses the op boundary as a negative int64


def every_op(x0, pred, a_t, s_t, ids, steps, flips, x, g, bucket, sign, scale, backend):
    noise = ops.gaussian_noise(SEED, ids, steps, flips, x0.shape[1:], backend=backend)
    x_t = ops.noisy_input(x0, a_t, s_t, SEED, ids, steps, flips, backend=backend)
    loss = ops.denoising_loss(pred, x0, a_t, s_t, SEED, ids, steps, flips, backend=backend)
    weight_sq, bias_sq = ops.linear_fisher_diag(x, g, bias=True, backend=backend)
    projected = ops.projected_linear_gradient(x, g, bucket, sign, 8, scale,
                                              backend="reference" if backend == "reference" else "blocked")
    return noise * 2, x_t + 1, loss.sum(), weight_sq, bias_sq, projected  # traced torch ops between the custom ops


def inputs():
    gen = torch.Generator().manual_seed(0)
    x0, pred = torch.randn(3, 2, 4, 5, generator=gen), torch.randn(3, 2, 4, 5, generator=gen)
    a_t, s_t = torch.rand(3, generator=gen), torch.rand(3, generator=gen)
    ids, steps, flips = torch.tensor([7, 2**32 - 1, 0]), torch.tensor([0, 5, 999]), torch.tensor([1, 0, 1])
    x, g = torch.randn(4, 3, 6, generator=gen), torch.randn(4, 3, 5, generator=gen)
    bucket, sign = torch.randint(0, 8, (5, 6), generator=gen), torch.randint(0, 2, (5, 6), generator=gen) * 2 - 1
    scale = torch.rand(5, 6, generator=gen)
    return x0, pred, a_t, s_t, ids, steps, flips, x, g, bucket, sign, scale


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compiled_ops_trace_in_one_graph_and_match_eager(backend):
    torch._dynamo.reset()
    args = inputs()
    eager = every_op(*args, backend)
    # fullgraph=True: any graph break (an op dynamo cannot trace) is an error. aot_eager runs the traced graph
    # through the fake implementations (shapes, dtypes) without inductor's C++ build, so the test stays fast.
    compiled = torch.compile(every_op, fullgraph=True, backend="aot_eager")(*args, backend)
    assert ops.last_backend("gaussian_noise") == ("cpp" if backend == "cpp" else "reference")
    for got, want in zip(compiled, eager, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


def test_large_seed_keeps_its_bits():
    from unlearn_fast.ops.noise_reference import gaussian_noise_reference

    ids, steps, flips = torch.tensor([3, 9]), torch.tensor([1, 4]), torch.tensor([0, 1])
    for seed in (2**63 - 1, 2**63, 2**64 - 1):
        want = gaussian_noise_reference(seed, ids, steps, flips, 12, torch.float32)  # the oracle takes the int itself
        for backend in CPU_BACKENDS:
            assert torch.equal(ops.gaussian_noise(seed, ids, steps, flips, 12, backend=backend), want), (seed, backend)
    assert not torch.equal(ops.gaussian_noise(2**64 - 1, ids, steps, flips, 12),
                           ops.gaussian_noise(2**63 - 1, ids, steps, flips, 12))  # the top bit is kept


def test_custom_ops_are_registered():
    for op in ("gaussian_noise", "noisy_input", "denoising_loss", "linear_fisher_diag", "projected_linear_gradient"):
        torch.library.opcheck(getattr(torch.ops.unlearn_fast, op).default, _opcheck_args(op),
                              test_utils=("test_schema", "test_faketensor"))


def _opcheck_args(op):
    x0, pred, a_t, s_t, ids, steps, flips, x, g, bucket, sign, scale = inputs()
    seed = -5  # 2**64 - 5 as it crosses the boundary
    return {
        "gaussian_noise": (seed, ids, steps, flips, 40, torch.float32, "auto"),
        "noisy_input": (x0, a_t, s_t, seed, ids, steps, flips, torch.float32, "auto"),
        "denoising_loss": (pred, x0, a_t, s_t, seed, ids, steps, flips, "auto"),
        "linear_fisher_diag": (x, g, True, "auto"),
        "projected_linear_gradient": (x, g, bucket, sign, 8, scale, "auto"),
    }[op]
