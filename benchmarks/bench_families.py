"""Scoring throughput per model family at tiny size: rows (image × timestep × flip) per second of
scoring.per_example_losses, the fused path against the reference path (stored noise, diffusers' own add_noise and
target), side by side in one run.

    python3 -m pytest benchmarks/bench_families.py --benchmark-columns=mean,stddev,rounds --benchmark-group-by=group

The pipelines are the tests' tiny random ones (tests/tiny_pipelines.py: 32 px images, 8 × 8 latents, a few thousand
to a few hundred thousand denoiser parameters), so these numbers measure how much of a pass is the family's own
call overhead and the loss arithmetic, not a real model's FLOPs; the default model and the tiny DiT are beside them.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_pipelines import FAMILIES, build_pipeline_folder  # noqa: E402
from unlearn_fast.engine.loss_grid import PATHS, LossGrid  # noqa: E402
from unlearn_fast.engine.scoring import per_example_losses
from unlearn_fast.models.adapter import DiffusionModel  # noqa: E402

ROWS, TIMESTEPS, BATCH = 64, 4, 128
WORDS = ["red", "apple", "cat", "face", "blue", "star", "green", "tree"]


@pytest.fixture(scope="module", params=[*FAMILIES, "default", "tiny-dit"])
def family_inputs(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "default":
        model = DiffusionModel.load("default")
    elif request.param == "tiny-dit":
        from unlearn_fast.models.tiny import new_tiny_model

        model = new_tiny_model(WORDS, architecture="dit")
    else:
        model = DiffusionModel.load(str(build_pipeline_folder(request.param, tmp_path_factory.mktemp(request.param),
                                                              WORDS)))
    model.eval()
    x0 = torch.randn(ROWS, *model.latent_shape)
    cond = model.encode_text([f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]}" for i in range(ROWS)])
    return request.param, model, x0, cond, list(range(ROWS))


@pytest.mark.parametrize("path", PATHS)
def test_family_scoring_pass(benchmark, family_inputs, path):
    name, model, x0, cond, ids = family_inputs
    settings = LossGrid(timesteps=TIMESTEPS, flips=True, batch_size=BATCH, path=path)
    benchmark.group = f"{name}: scoring pass, {ROWS} latents x {TIMESTEPS} timesteps x 2 flips"
    benchmark.pedantic(lambda: per_example_losses(model, x0, cond, ids, settings), rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(family=model.family.name, objective=model.prediction_type,
                                denoiser_parameters=sum(p.numel() for p in model.unet.parameters()),
                                rows_per_s=ROWS * TIMESTEPS * 2 / benchmark.stats.stats.mean,
                                threads=torch.get_num_threads())
