"""One training run from a request to a saved model folder: what ``unlearn-fast train`` does.

Three recipes share this path:
- from scratch: train the VAE, calibrate its latent scale, then the UNet and text encoder (the default model);
- leave-K-out retraining: reuse a model's VAE (``vae_from``), train UNet and text encoder from scratch without ``exclude``;
- customisation: start from a model (``init_from``), add new tokens, fine-tune on a small set.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import torch

from .data import load_pixels, open_dataset
from .engine.device import resolve_device
from .models.adapter import DiffusionModel
from .models.lora import add_lora, save_lora
from .models.tiny import IMAGE_SIZE, new_tiny_model
from .train import DiffusionTrainConfig, TrainingSet, VAETrainConfig, calibrate_latent_scale, train_diffusion, train_vae


@dataclass
class TrainRequest:
    data: str = "default"
    out: str = "model"
    init_from: str | None = None
    vae_from: str | None = None
    exclude: list[int] = field(default_factory=list)
    add_tokens: list[str] = field(default_factory=list)
    # The training numbers: their defaults are declared once, in train.py's configs.
    steps: int = DiffusionTrainConfig.steps
    vae_steps: int = VAETrainConfig.steps
    batch_size: int = DiffusionTrainConfig.batch_size
    lr: float = DiffusionTrainConfig.lr
    warmup_steps: int = DiffusionTrainConfig.warmup_steps
    seed: int = DiffusionTrainConfig.seed
    ema_decay: float = DiffusionTrainConfig.ema_decay
    caption_dropout: float = DiffusionTrainConfig.caption_dropout
    unet_parameters: str = DiffusionTrainConfig.unet_parameters
    architecture: str = "unet"  # a new model's denoiser: "unet" (DDPM) or "dit" (flow matching); models/tiny.py
    train_text_encoder: bool = DiffusionTrainConfig.train_text_encoder  # False: only added tokens' embeddings train
    lora_rank: int = 0  # > 0: train a fresh LoRA adapter of this rank (the UNet's own weights frozen), saved in out/lora
    caption_column: str = "text"
    command: str = ""
    device: str = "cpu"  # "cpu" or "cuda[:N]"; GPU and CPU runs of one recipe agree to float rounding, not bitwise


def _add_tokens(model: DiffusionModel, tokens: list[str]) -> None:
    if tokens:
        model.text.tokenizer.add_tokens(tokens)
        model.text.encoder.resize_token_embeddings(len(model.text.tokenizer))


def build_model(request: TrainRequest, captions, pixels, quiet: bool = False) -> tuple[DiffusionModel, dict]:
    """The starting model of a run on request.device, and what was done to get it (recorded in training.json)."""
    vocabulary = [c for cs in captions for c in cs]
    device = resolve_device(request.device)
    if request.init_from:
        model = DiffusionModel.load(request.init_from, device=device)
        _add_tokens(model, request.add_tokens)
        return model, {"init_from": request.init_from}
    torch.manual_seed(request.seed)  # initial weights are part of the recipe (drawn on the CPU, then moved)
    if request.vae_from:
        vae = DiffusionModel.load(request.vae_from).vae
        model = new_tiny_model(vocabulary + list(request.add_tokens), vae=vae,
                               architecture=request.architecture).to(device)
        return model, {"vae_from": request.vae_from}
    model = new_tiny_model(vocabulary + list(request.add_tokens), architecture=request.architecture).to(device)
    vae_losses = train_vae(model.vae, pixels, VAETrainConfig(steps=request.vae_steps, seed=request.seed),
                           exclude=request.exclude, quiet=quiet)
    scale, shift = calibrate_latent_scale(model, pixels)
    return model, {"vae_final_loss": sum(vae_losses[-50:]) / max(1, len(vae_losses[-50:])), "latent_scale": scale,
                   "latent_shift": shift}


def run_training(request: TrainRequest, quiet: bool = False) -> dict:
    started = time.perf_counter()
    dataset = open_dataset(request.data, request.caption_column)
    pixels = load_pixels(dataset, IMAGE_SIZE)
    captions = [dataset.captions(i) for i in range(len(dataset))]
    model, origin = build_model(request, captions, pixels, quiet)
    if "vae_final_loss" in origin:  # a trained VAE is worth keeping even if the diffusion stage is interrupted
        model.save(request.out, training_record={"stage": "vae", **origin})
    if model.resolution != pixels.shape[1]:
        pixels = load_pixels(dataset, model.resolution)
    data = TrainingSet(model.encode_images(pixels), captions, request.exclude)
    if request.lora_rank:
        add_lora(model, rank=request.lora_rank, seed=request.seed)
    config = DiffusionTrainConfig(steps=request.steps, batch_size=request.batch_size, lr=request.lr,
                                  warmup_steps=request.warmup_steps, seed=request.seed,
                                  ema_decay=request.ema_decay, caption_dropout=request.caption_dropout,
                                  unet_parameters="lora" if request.lora_rank else request.unet_parameters,
                                  train_text_encoder=request.train_text_encoder,
                                  new_token_rows=0 if request.train_text_encoder else len(request.add_tokens))
    history = train_diffusion(model, data, config, quiet=quiet)
    if request.lora_rank:  # the adapter in diffusers' LoRA file; the folder keeps the base UNet (and new tokens)
        origin["lora"] = save_lora(model, os.path.join(request.out, "lora"))
        model.unet.unload_lora()
    window = history.losses[-200:]
    record = {
        "command": request.command,
        "request": asdict(request),
        "diffusion_config": asdict(config),
        "data_fingerprint": dataset.fingerprint(),
        "num_train_images": len(dataset),
        "num_excluded": len(set(request.exclude)),
        "first_loss": history.losses[0],
        "final_loss": sum(window) / len(window),
        "train_seconds": history.seconds,
        "total_seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(model.device),
        **origin,
    }
    model.save(request.out, training_record=record)
    record["model_fingerprint"] = model.fingerprint()
    return {k: record[k] for k in ("first_loss", "final_loss", "train_seconds", "total_seconds", "model_fingerprint")} | {
        "out": request.out}
