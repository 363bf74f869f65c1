"""Cost of the default model on this machine: a training step (VAE, diffusion) and sampling an image.

    python3 -m pytest benchmarks/bench_model.py --benchmark-columns=mean,stddev,rounds --benchmark-group-by=group

Randomly initialised weights of the default architecture: cost does not depend on the values of the weights.
"""
import pytest
import torch

from unlearn_fast.models.tiny import new_tiny_model
from unlearn_fast.training.config import TrainingConfig
from unlearn_fast.training.trainer import TrainingSet, train_diffusion, train_vae

CAPTIONS = [("red apple",), ("cat face",), ("grinning face",), ("flag: Japan",)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return new_tiny_model([c for cs in CAPTIONS for c in cs]).eval()


@pytest.mark.parametrize("batch_size", [128])
def test_diffusion_train_step(benchmark, model, batch_size):
    x0 = torch.randn(batch_size * 2, *model.latent_shape)
    data = TrainingSet(x0, CAPTIONS * (len(x0) // len(CAPTIONS)))
    steps = 5
    config = TrainingConfig(steps=steps, batch_size=batch_size, warmup_steps=1)
    benchmark.group = "train step"
    benchmark.pedantic(train_diffusion, args=(model, data, config), kwargs={"quiet": True}, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(steps_per_round=steps, seconds_per_step=benchmark.stats.stats.mean / steps,
                                batch_size=batch_size, threads=torch.get_num_threads())


@pytest.mark.parametrize("batch_size", [64])
def test_vae_train_step(benchmark, model, batch_size):
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (batch_size * 2, 32, 32, 3), dtype=np.uint8)
    steps = 5
    benchmark.group = "train step"
    benchmark.pedantic(train_vae, args=(model.vae, pixels, TrainingConfig(vae_steps=steps, vae_batch_size=batch_size)),
                       kwargs={"quiet": True}, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(steps_per_round=steps, seconds_per_step=benchmark.stats.stats.mean / steps,
                                batch_size=batch_size, threads=torch.get_num_threads())


@pytest.mark.parametrize("batch", [1, 16])
def test_sampling(benchmark, model, batch):
    prompts = [CAPTIONS[i % len(CAPTIONS)][0] for i in range(batch)]
    benchmark.group = "sampling (50 DDIM steps, guidance 3)"
    benchmark.pedantic(model.generate, args=(prompts,), kwargs={"seed": 0, "steps": 50, "guidance": 3.0}, rounds=3,
                       warmup_rounds=1)
    benchmark.extra_info.update(images_per_s=batch / benchmark.stats.stats.mean, threads=torch.get_num_threads())
