"""Fused noisy input + denoising loss (ops.noisy_input, ops.denoising_loss) against the unfused PyTorch path.

    python3 -m pytest benchmarks/bench_fused_loss.py --benchmark-columns=mean,stddev,min,rounds --benchmark-group-by=group

The unfused path is what a training step does without the fused ops: eps = gaussian_noise(...) (its fastest backend)
stored as a tensor, x0 flipped with torch.flip, x_t = a_t * x0' + s_t * eps, then mean((pred - eps)^2) per row. The
fused path regenerates eps in each kernel instead (twice per step: once for x_t, once for the loss) and never stores
it. Stages: the whole step (x_t and loss), and each op alone against its unfused counterpart (the unfused loss alone
has to regenerate its noise too, having not kept it). epsilon prediction, float32, half the rows flipped.
The model call between the two ops is not part of either path. Triton rows run only on a GPU (the interpreter is not
a speed number; tests cover it).
"""
import pytest
import torch

from unlearn_fast import ops

SIZES = {"4096 x 4x8x8": (4096, (4, 8, 8)), "256 x 4x64x64": (256, (4, 64, 64))}
STAGES = {"x_t + loss": ("noisy_input", "denoising_loss"), "x_t": ("noisy_input",), "loss": ("denoising_loss",)}
DEVICE = {"unfused": "cpu", "cpp": "cpu", "cuda": "cuda", "triton": "cuda", "unfused cuda": "cuda"}
SEED = 2024


def _inputs(batch, shape, device):
    g = torch.Generator().manual_seed(0)
    abar = torch.rand(batch, generator=g, dtype=torch.float64)
    return dict(
        x0=torch.randn(batch, *shape, generator=g).to(device),
        pred=torch.randn(batch, *shape, generator=g).to(device),
        a_t=abar.sqrt().float().to(device),
        s_t=(1 - abar).sqrt().float().to(device),
        ids=torch.arange(batch, device=device),
        steps=torch.arange(batch, device=device) % 10,
        flips=torch.arange(batch, device=device) % 2,
    )


def _unfused(stage, x0, pred, a_t, s_t, ids, steps, flips):
    a, s = a_t.view(-1, 1, 1, 1), s_t.view(-1, 1, 1, 1)
    eps = ops.gaussian_noise(SEED, ids, steps, flips, x0.shape[1:])  # stored noise
    out = []
    if stage != "loss":
        x0_flipped = torch.where(flips.bool().view(-1, 1, 1, 1), torch.flip(x0, dims=[-1]), x0)
        out.append(a * x0_flipped + s * eps)
    if stage != "x_t":
        out.append((pred - eps).pow(2).flatten(1).mean(1))
    return out


def _fused(stage, backend, x0, pred, a_t, s_t, ids, steps, flips):
    keys = (SEED, ids, steps, flips)
    out = []
    if stage != "loss":
        out.append(ops.noisy_input(x0, a_t, s_t, *keys, backend=backend))
    if stage != "x_t":
        out.append(ops.denoising_loss(pred, x0, torch.ones_like(a_t), torch.zeros_like(s_t), *keys, backend=backend))
    return out


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("path", ["unfused", "cpp", "unfused cuda", "cuda", "triton"])
def test_fused_loss(benchmark, path, stage, size):
    device = DEVICE[path]
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    backend = path.split()[0]
    if backend != "unfused" and backend not in ops.available_backends(device):
        pytest.skip(f"{backend} backend not available on {device}")
    batch, shape = SIZES[size]
    inputs = _inputs(batch, shape, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        out = _unfused(stage, **inputs) if backend == "unfused" else _fused(stage, backend, **inputs)
        sync()
        return out

    step()  # warm-up: compilation, first-touch allocation
    benchmark.group = f"{stage}, {size}"
    out = benchmark(step)
    if backend != "unfused":
        assert all(ops.last_backend(op) == backend for op in STAGES[stage])
    reference = _unfused(stage, **inputs)
    for got, want in zip(out, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    benchmark.extra_info.update(values=batch * shape[0] * shape[1] * shape[2], device=device)

