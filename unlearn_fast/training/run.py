"""One training run from a request to a saved model folder with training.json: what ``unlearn-fast train`` does.

Three recipes share this path:
- from scratch: train the VAE, calibrate its latent scale, then the UNet and text encoder (the default model);
- leave-K-out retraining: reuse a model's VAE (``vae_from``), train UNet and text encoder from scratch without
  ``exclude`` (retraining.py runs these as resumable jobs);
- customisation: start from a model (``init_from``), add new tokens, fine-tune on a small set.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields

import torch

from ..data import load_pixels, open_dataset
from ..engine.device import resolve_device
from ..models.adapter import DiffusionModel
from ..models.lora import add_lora, save_lora
from ..models.tiny import IMAGE_SIZE, new_tiny_model
from .config import TrainingConfig
from .trainer import TrainingSet, calibrate_latent_scale, train_diffusion, train_vae


@dataclass
class TrainRequest(TrainingConfig):
    """A training config (its numbers and their defaults are TrainingConfig's, declared once) plus what to train on,
    from what, and where to write."""

    data: str = "default"
    out: str = "model"
    init_from: str | None = None
    vae_from: str | None = None
    exclude: list[int] = field(default_factory=list)
    add_tokens: list[str] = field(default_factory=list)
    architecture: str = "unet"  # a new model's denoiser: "unet" (DDPM) or "dit" (flow matching); models/tiny.py
    lora_rank: int = 0  # > 0: train a fresh LoRA adapter of this rank (the UNet's weights frozen), saved in out/lora
    caption_column: str = "text"
    image_column: str = "image"  # parquet data: the images' column
    subset: str | None = None  # a file naming the images to train on (data/subset.py); None: all of `data`
    command: str = ""
    device: str = "cpu"  # "cpu" or "cuda[:N]"; GPU and CPU runs of one recipe agree to float rounding, not bitwise

    def training_config(self) -> TrainingConfig:
        """The trainer's recipe: the request's numbers, with the parameters a LoRA adapter or added tokens imply."""
        numbers = {f.name: getattr(self, f.name) for f in fields(TrainingConfig)}
        return TrainingConfig(**numbers | {
            "unet_parameters": "lora" if self.lora_rank else self.unet_parameters,
            "new_token_rows": 0 if self.train_text_encoder else len(self.add_tokens)})


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
    vae_losses = train_vae(model.vae, pixels, request.training_config(), exclude=request.exclude, quiet=quiet)
    scale, shift = calibrate_latent_scale(model, pixels)
    return model, {"vae_final_loss": sum(vae_losses[-50:]) / max(1, len(vae_losses[-50:])), "latent_scale": scale,
                   "latent_shift": shift}


def run_training(request: TrainRequest, quiet: bool = False) -> dict:
    started = time.perf_counter()
    dataset = open_dataset(request.data, request.caption_column, request.image_column, request.subset)
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
    config = request.training_config()
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
    summary = ("first_loss", "final_loss", "train_seconds", "total_seconds", "model_fingerprint")
    return {k: record[k] for k in summary} | {"out": request.out}
