"""Scoring pass: images·timesteps per second of scoring.per_example_losses, fused vs reference path, fp32 and bf16.

    python3 -m pytest benchmarks/bench_scoring.py --benchmark-columns=mean,stddev,min,rounds --benchmark-group-by=group

The shipped default model on the first 256 default images, 10 timesteps, no flips, batch 512 (5 full batches).
"""
import pytest
import torch

from unlearn_fast.scoring import LossGrid, per_example_losses

IMAGES, TIMESTEPS, BATCH = 256, 10, 512


@pytest.fixture(scope="module")
def inputs():
    from unlearn_fast.data import load_pixels, open_dataset
    from unlearn_fast.models.adapter import DiffusionModel

    model = DiffusionModel.load("default").eval()
    dataset = open_dataset("default")
    ids = list(range(IMAGES))
    x0 = model.encode_images(load_pixels(dataset, model.resolution, ids))
    cond = model.encode_text([dataset.captions(i)[0] for i in ids])
    return model, x0, cond, ids


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_scoring_pass(benchmark, inputs, backend, dtype):
    settings = LossGrid(timesteps=TIMESTEPS, flips=False, batch_size=BATCH, dtype=dtype, backend=backend)
    benchmark.group = f"scoring pass, {IMAGES} images x {TIMESTEPS} timesteps, batch {BATCH}"
    # bf16 is emulated on CPUs without AVX-512 BF16 (~10x slower than fp32): one round keeps the suite short there.
    rounds = 3 if dtype == "fp32" else 1
    benchmark.pedantic(per_example_losses, args=(*inputs, settings), rounds=rounds, warmup_rounds=1)
    benchmark.extra_info.update(image_timesteps_per_s=IMAGES * TIMESTEPS / benchmark.stats.stats.mean,
                                threads=torch.get_num_threads())
