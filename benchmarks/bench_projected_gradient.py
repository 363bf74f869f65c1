"""Stage 1's projected per-example Linear gradients (ops.projected_linear_gradient) against materialising them.

    python3 -m pytest benchmarks/bench_projected_gradient.py --benchmark-columns=mean,stddev,min,rounds --benchmark-group-by=group

Each path gives P · vec(s ⊙ g_nᵀx_n) (dim 4096) for every example n of one Linear layer's (x, g):
- "blocked": the op (one (N, d_out, block) slab of Σ_tokens g ⊗ x at a time, bounded by SLAB_BYTES, scattered into
  the buckets);
- "materialised": every per-example gradient (N, d_out, d_in) in float32 by einsum, scaled, then one index_add
  (what a per-example-gradient path such as vmap hands a sparse projector);
- "reference": the op's oracle (float64 gradients and a dense P): on the tiny layer only (the dense P of the MSCOCO
  layer would be 10 GB).
Layers: a cross-attention K/V projection at stage 1's batch (caption rows × the scoring grid's 20 rows stacked on the
token axis): the tiny default model (25 rows × 20 × 16 tokens, 64 → 64) and the AbU paper's MSCOCO UNet (4 rows ×
20 × 77 tokens, 1024 → 320). Peak memory is not measured here: "materialised" holds N·d_out·d_in floats (4 × 320 ×
1024 × 4 B = 5 MB for the MSCOCO case at N = 4, 1.3 GB at N = 1,000 rows), "blocked" one slab (8 MiB) whatever N.
"""
import pytest
import torch

from unlearn_fast import ops

DIM = 4096
LAYERS = {"tiny K/V layer, 25 rows": (25, 20 * 16, 64, 64), "MSCOCO K/V layer, 4 rows": (4, 20 * 77, 1024, 320)}


def inputs(case: str):
    n, t, d_in, d_out = LAYERS[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, t, d_in, generator=generator)
    g = torch.randn(n, t, d_out, generator=generator)
    bucket = torch.randint(0, DIM, (d_out * d_in,), generator=generator)
    sign = torch.randint(0, 2, (d_out * d_in,), generator=generator).float() * 2 - 1
    scale = torch.rand(d_out, d_in, generator=generator) + 0.5
    return x, g, bucket, sign, scale


def materialised(x, g, bucket, sign, scale):
    grads = torch.einsum("nto,nti->noi", g, x) * scale
    out = torch.zeros(len(x), DIM, dtype=torch.float64)
    out.index_add_(1, bucket, (grads.flatten(1) * sign).double())
    return out


PATHS = {
    "blocked": lambda *a: ops.projected_linear_gradient(*a[:4], DIM, a[4]),
    "materialised": materialised,
    "reference": lambda *a: ops.projected_linear_gradient(*a[:4], DIM, a[4], backend="reference"),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(LAYERS))
def test_projected_linear_gradient(benchmark, case, path):
    if path == "reference" and not case.startswith("tiny"):
        pytest.skip("the dense projection of this layer does not fit in memory")
    args = inputs(case)
    benchmark.group = case
    out = benchmark.pedantic(PATHS[path], args=args, rounds=5, warmup_rounds=1)
    expected = materialised(*args)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-3 * expected.abs().max().item())
