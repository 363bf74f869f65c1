"""Scoring pass: images·timesteps per second of scoring.per_example_losses, fused vs reference path.

    python3 -m pytest benchmarks/bench_scoring.py --benchmark-columns=mean,stddev,min,rounds --benchmark-group-by=group

1. The shipped default model on the first 256 default images, 10 timesteps, no flips, batch 512, fp32 and bf16.
2. The AbU paper's MSCOCO UNet (57 M parameters, 16x16x4 latents, 77 x 1024 text), random init: throughput and
   achieved TFLOP/s of every engine path against the reference-style fp32 loop, on the GPU when there is one.
"""
import pytest
import torch

from unlearn_fast.engine.loss_grid import PATHS, LossGrid

from unlearn_fast.engine.scoring import per_example_losses

IMAGES, TIMESTEPS, BATCH = 256, 10, 512


@pytest.fixture(scope="module")
def inputs():
    from unlearn_fast.data import load_pixels, open_dataset
    from unlearn_fast.models.adapter import DiffusionModel

    model = DiffusionModel.load("default", device="cuda" if torch.cuda.is_available() else "cpu").eval()
    dataset = open_dataset("default")
    ids = list(range(IMAGES))
    # Rows stay on the CPU, as the Attributor's memmap rows do: each batch moves to the model's device in the pass.
    x0 = model.encode_images(load_pixels(dataset, model.resolution, ids)).cpu()
    cond = model.encode_text([dataset.captions(i)[0] for i in ids]).cpu()
    return model, x0, cond, ids


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("path", PATHS)
def test_scoring_pass(benchmark, inputs, path, dtype):
    settings = LossGrid(timesteps=TIMESTEPS, flips=False, batch_size=BATCH, dtype=dtype, path=path)
    benchmark.group = f"scoring pass, {IMAGES} images x {TIMESTEPS} timesteps, batch {BATCH}"
    # bf16 is emulated on CPUs without AVX-512 BF16 (~10x slower than fp32): one round keeps the suite short there.
    rounds = 3 if dtype == "fp32" else 1
    def run():
        losses = per_example_losses(*inputs, settings)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return losses
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    benchmark.extra_info.update(image_timesteps_per_s=IMAGES * TIMESTEPS / benchmark.stats.stats.mean,
                                threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------------ MSCOCO UNet
# The scoring pass on the AbU paper's MSCOCO UNet (reference_models.py; random init, so cost only): images·timesteps
# per second and achieved TFLOP/s, every path side by side in one run, against the reference-style fp32 loop (stored
# noise, torch.flip, model.loss, eager fp32: what the paper's code does). On a GPU the suite adds the bf16 +
# channels_last + torch.compile paths (and CUDA graphs); on a CPU without AVX-512 BF16 bf16 is emulated (12.8x slower
# than fp32 above), and compiling a 57 M-parameter UNet takes minutes on 2 cores, so the CPU rows are fp32 eager.
ON_GPU = torch.cuda.is_available()
MSCOCO_ROWS, MSCOCO_BATCH = (16384, 1024) if ON_GPU else (64, 32)
MSCOCO_PATHS = {  # name: (LossGrid.path, dtype, compile mode, channels_last)
    "reference fp32 loop": ("stored-noise", "fp32", "none", False),
    "fused fp32": ("fused", "fp32", "none", False),
    "fused fp32, channels_last": ("fused", "fp32", "none", True),
}
if ON_GPU:
    MSCOCO_PATHS |= {
        "fused bf16 autocast, channels_last": ("fused", "bf16", "none", True),
        "fused bf16, channels_last, compile": ("fused", "bf16", "default", True),
        "fused bf16, channels_last, compile max-autotune": ("fused", "bf16", "max-autotune", True),
        "fused bf16, channels_last, compile + CUDA graphs": ("fused", "bf16", "reduce-overhead", True),
    }
_mscoco_losses = {}


@pytest.fixture(scope="module")
def mscoco():
    """(model, x0, cond, ids, GFLOP per forward): MSCOCO_ROWS // 2 images × 2 timesteps, kept on the CPU as the
    Attributor keeps its memmap rows (each batch is moved to the device inside the pass)."""
    from reference_models import MSCOCO_TEXT, forward_flops, mscoco_model

    device = "cuda" if ON_GPU else "cpu"
    model = mscoco_model(device)
    gen = torch.Generator().manual_seed(0)
    images = MSCOCO_ROWS // 2
    x0 = torch.randn(images, *model.latent_shape, generator=gen)
    cond = torch.randn(images, *MSCOCO_TEXT, generator=gen)
    flops = forward_flops(model.unet, model.latent_shape, MSCOCO_TEXT, device)
    return model, x0, cond, list(range(images)), flops / 1e9


@pytest.mark.parametrize("path", MSCOCO_PATHS)
def test_mscoco_scoring_pass(benchmark, mscoco, path):
    import time

    model, x0, cond, ids, gflop = mscoco
    loss_path, dtype, mode, channels_last = MSCOCO_PATHS[path]
    settings = LossGrid(timesteps=2, flips=False, batch_size=MSCOCO_BATCH, dtype=dtype, path=loss_path,
                        compile=mode, channels_last=channels_last)
    rows = len(ids) * 2
    benchmark.group = f"scoring pass, MSCOCO UNet, {rows} image-timesteps, batch {MSCOCO_BATCH}"

    def run():
        losses = per_example_losses(model, x0, cond, ids, settings)
        if ON_GPU:
            torch.cuda.synchronize()
        return losses
    started = time.perf_counter()
    run()  # warm-up; includes the compilation
    first_call_s = time.perf_counter() - started
    losses = benchmark.pedantic(run, rounds=5 if ON_GPU else 3, warmup_rounds=0)
    _mscoco_losses[path] = losses
    reference = _mscoco_losses.get("reference fp32 loop")
    rate = rows / benchmark.stats.stats.mean
    benchmark.extra_info.update(
        image_timesteps_per_s=rate, achieved_tflop_per_s=rate * gflop / 1e3, gflop_per_forward=gflop,
        first_call_s=first_call_s, device=str(model.device), threads=torch.get_num_threads(),
        # The paths compute the same losses: fp32 to rounding, bf16 to its stated bound (tests/engine/test_scoring.py).
        max_relative_difference_from_reference=None if reference is None else
        float(((losses - reference).abs() / reference.abs()).max()))
