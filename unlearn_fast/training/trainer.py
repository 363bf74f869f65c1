"""The trainer: the shipped default model, every leave-K-out retraining and every customisation fine-tune use it.

Deterministic given a seed (data order, timesteps, noise and initialisation all come from seeded generators), and the
only way it reads training data is ``TrainingSet.batch`` — so excluded indices provably never reach a step. The
numbers come from one TrainingConfig (config.py): train_vae reads its vae_* fields, train_diffusion the others.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.adapter import DiffusionModel
from .config import TrainingConfig


class TrainingSet:
    """Encoded training examples x0 (N, C, h, w) with their captions, minus the excluded indices.

    A leave-K-out run replays the full run's batches with the excluded rows dropped: the index stream is a seeded
    order over ALL N examples, and every per-row draw (caption, dropout, timestep, noise) is made for the whole batch
    before the excluded rows are removed. So the only difference from the original run is the removed images (and
    the smaller batches they leave), not a reshuffled data order: ΔL measures the removal, not seed noise.
    """

    def __init__(self, x0: torch.Tensor, captions: list[tuple[str, ...]], exclude=()):
        if len(x0) != len(captions):
            raise ValueError(f"TrainingSet: {len(x0)} examples but {len(captions)} caption lists")
        excluded = torch.as_tensor(sorted({int(i) for i in exclude}), dtype=torch.long)
        if len(excluded) and (excluded.min() < 0 or excluded.max() >= len(x0)):
            bad = [int(i) for i in excluded if not 0 <= i < len(x0)][:5]
            raise ValueError(f"exclude: indices {bad} are outside the training set of {len(x0)} images")
        self.keep = torch.ones(len(x0), dtype=torch.bool)
        self.keep[excluded] = False
        self.x0 = x0
        self.captions = captions
        if not bool(self.keep.any()):
            raise ValueError("TrainingSet: every example is excluded")

    def __len__(self) -> int:
        return int(self.keep.sum())

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """(x0, captions, kept) for the allowed rows of ``indices``; kept (len(indices),) bool marks them. A caption
        is drawn for every row (allowed or not), so the generator advances exactly as in the full run."""
        picks = torch.randint(0, 1 << 30, (len(indices),), generator=generator)
        kept = self.keep[indices]
        allowed = indices[kept]
        captions = [self.captions[i][int(p) % len(self.captions[i])] for i, p in zip(allowed.tolist(), picks[kept])]
        return self.x0[allowed], captions, kept

    def index_stream(self, batch_size: int, generator: torch.Generator):
        """Endless epochs over all N indices, each in a fresh seeded order (batch() drops the excluded ones)."""
        n = len(self.keep)
        while True:
            order = torch.randperm(n, generator=generator)
            # Whole batches only (the tail of an epoch is dropped); a set smaller than a batch is one batch.
            for start in range(0, max(1, n - batch_size + 1), batch_size):
                yield order[start:start + batch_size]


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_vae(vae: nn.Module, pixels: np.ndarray, config: TrainingConfig, exclude=(), quiet: bool = False,
              ) -> list[float]:
    """Reconstruction (L1 + MSE) + KL training of an AutoencoderKL on uint8 images (N, H, W, 3): config's vae_steps,
    vae_batch_size, vae_lr, vae_kl_weight and seed."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.as_tensor(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    data = TrainingSet(images, [("",)] * len(images), exclude)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, 100, config.vae_steps))
    stream = data.index_stream(config.vae_batch_size, generator)
    vae.requires_grad_(True)
    vae.train()
    losses = []
    with tqdm(range(config.vae_steps), desc="train vae", disable=quiet, unit="step") as bar:
        for _ in bar:
            x, _, kept = data.batch(next(stream), generator)
            if not bool(kept.any()):
                schedule.step()  # every row of this batch is excluded: no update, the schedule still advances
                continue
            x = x.to(vae.device)  # images stay on the CPU; one batch at a time goes to the VAE's device
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device)
            recon = vae.decode(z).sample
            loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + config.vae_kl_weight * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    vae.requires_grad_(False)  # trained weights are frozen, as train_diffusion leaves its own
    vae.eval()
    return losses


@torch.no_grad()
def calibrate_latent_scale(model: DiffusionModel, pixels: np.ndarray) -> tuple[float, float]:
    """Set the VAE's shift and scaling factors so that training latents have mean 0 and standard deviation 1."""
    model.vae.register_to_config(scaling_factor=1.0, shift_factor=0.0)
    latents = model.encode_images(pixels)
    shift = float(latents.mean())
    scale = float(1.0 / (latents - shift).std())
    model.vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    return scale, shift


@dataclass
class TrainingHistory:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    seen_examples: int = 0


def train_diffusion(model: DiffusionModel, data: TrainingSet, config: TrainingConfig, quiet: bool = False,
                    ) -> TrainingHistory:
    """Denoising training of the UNet (and the text encoder) on ``data``; leaves the EMA weights in the model."""
    from diffusers.training_utils import EMAModel

    generator = torch.Generator().manual_seed(config.seed)
    unet_params = list(model.parameter_group(config.unet_parameters).values())
    text_params = list(model.text.encoder.parameters()) if config.train_text_encoder else []
    token_hook = None
    if config.new_token_rows and not config.train_text_encoder:
        table = model.text.encoder.get_input_embeddings().weight
        first = table.shape[0] - config.new_token_rows
        text_params = [table]
        token_hook = table.register_hook(lambda g: torch.cat([torch.zeros_like(g[:first]), g[first:]]))
        kept_rows = table.detach()[:first].clone()  # put back after each step: weight decay moves rows without grad
    text_grad = bool(text_params)
    trainable = unet_params + text_params
    for module in (model.unet, model.text.encoder, model.vae):
        if module is not None:
            module.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _warmup_cosine(s, config.warmup_steps, config.steps))
    ema = EMAModel(trainable, decay=config.ema_decay, use_ema_warmup=True, power=3 / 4) if config.ema_decay else None
    stream = data.index_stream(config.batch_size, generator)
    num_timesteps = model.num_timesteps
    model.unet.train()
    model.text.encoder.train(config.train_text_encoder)
    history = TrainingHistory()
    start = time.perf_counter()
    with tqdm(range(config.steps), desc="train diffusion", disable=quiet, unit="step") as bar:
        for _ in bar:
            indices = next(stream)
            x0, captions, kept = data.batch(indices, generator)
            # Per-row draws for the whole batch, then the excluded rows' draws are dropped (see TrainingSet).
            drop = (torch.rand(len(indices), generator=generator) < config.caption_dropout)[kept]
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            timesteps = torch.randint(0, num_timesteps, (len(indices),), generator=generator)[kept]
            noise = torch.randn((len(indices), *x0.shape[1:]), generator=generator)[kept]
            if not bool(kept.any()):
                schedule.step()  # a batch of excluded rows only: no update, the schedule keeps time with the full run
                continue
            cond = model.encode_text(captions, grad=text_grad)
            loss = model.loss(x0.to(model.device), cond, timesteps.to(model.device), noise.to(model.device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            if token_hook is not None:
                with torch.no_grad():
                    table[:first] = kept_rows
            schedule.step()
            if ema is not None:
                ema.step(trainable)
            history.losses.append(loss.item())
            history.seen_examples += len(x0)
            bar.set_postfix(loss=f"{np.mean(history.losses[-100:]):.4f}", refresh=False)
    if ema is not None:
        ema.copy_to(trainable)
    if token_hook is not None:
        token_hook.remove()
    for p in trainable:
        p.requires_grad_(False)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history
