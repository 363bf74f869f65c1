"""NaN and inf caught where they enter: weights when a model folder or a LoRA loads, settings before generation, and
images before the uint8 conversion that would silently turn NaN into black.

A NaN weight otherwise surfaces much later and far away: an all-NaN Fisher, base losses and scores ("try a smaller
alpha"), or a black query image attributed with exit 0. One pass of torch.isfinite per tensor on load costs a fraction
of reading the weights, so every load path (DiffusionModel.load for every family, lora.load_lora) runs it.
"""
from __future__ import annotations

import json
import math
import os
from itertools import chain
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import SettingsError, UserInputError
from .folder import ModelFolderError, denoiser_part


class DamagedWeightsError(ModelFolderError):
    """Weights holding NaN or inf values; the message names the file and the first such tensor."""


class GenerationError(UserInputError):
    """A sampled image holding NaN or inf values (sampling diverged); the message names its prompt and seed."""


def check_finite(named_tensors: Iterable[tuple[str, torch.Tensor]], where: str | Callable[[str], str]) -> None:
    """Raise DamagedWeightsError at the first floating-point tensor holding NaN or inf, naming it and `where` it was
    read from (a path, or a function of the tensor's name giving one)."""
    for name, tensor in named_tensors:
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.is_meta:
            continue
        if not bool(torch.isfinite(tensor).all()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            place = where(name) if callable(where) else where
            raise DamagedWeightsError(f"{place}: tensor {name!r} holds {nan} NaN / {inf} inf values; the weights are "
                                      "damaged")


def model_parts(model) -> dict[str, nn.Module]:
    """Every module of a model by the folder it loads from: a pipeline family's every component (a second text
    encoder, an image encoder...), else the denoiser, the VAE and the text encoder."""
    pipeline = getattr(model.family, "pipeline", None)
    if pipeline is not None:
        return {name: part for name, part in pipeline.components.items() if isinstance(part, nn.Module)}
    parts = {denoiser_part(model.unet): model.unet, "vae": model.vae,
             "text_encoder": model.text.encoder if model.text is not None else None}
    return {name: part for name, part in parts.items() if part is not None}


def check_model_finite(model, folder: str) -> None:
    """Every parameter and buffer of every part of a model loaded from `folder` is finite."""
    for part, module in model_parts(model).items():
        tensors = chain(module.named_parameters(), module.named_buffers())
        check_finite(tensors, lambda name, part=part: weights_file(folder, part, name))


def weights_file(folder: str, part: str, key: str) -> str:
    """The safetensors file of `folder`/`part` that holds tensor `key`: the one file, the shard a sharded index maps it
    to, else the part's folder (several variants, or a tensor computed at load rather than stored)."""
    if os.path.isfile(folder):  # a single-file checkpoint holds every part
        return folder
    directory = os.path.join(folder, part)
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    for name in names:
        if name.endswith(".safetensors.index.json"):
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                shard = json.load(handle).get("weight_map", {}).get(key)
            if shard:
                return os.path.join(directory, shard)
    files = [name for name in names if name.endswith(".safetensors")]
    return os.path.join(directory, files[0]) if len(files) == 1 else directory


def check_file_finite(path: str) -> None:
    """Every tensor of a safetensors file is finite (read one at a time: a LoRA before it touches the model)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as weights:
        check_finite(((key, weights.get_tensor(key)) for key in weights.keys()), path)


def require_finite(value, name: str) -> float:
    """A float setting as a finite float; SettingsError naming it otherwise (NaN passes every comparison)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise SettingsError(f"{name} must be a finite number, got {value!r}")
    return number


def image_bytes(images: np.ndarray, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """Float images in [0, 1] (B, H, W, 3) → uint8; a row holding NaN or inf is refused, naming its prompt and seed
    (astype would make it black, and a black query would be attributed)."""
    images = np.asarray(images)
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise GenerationError(f"the image generated for prompt {prompts[row][:80]!r} (seed {seeds[row]}) holds NaN/inf "
                              "values: sampling diverged (damaged weights, or a guidance scale or step count the model "
                              "cannot take)")
    return (images * 255.0).round().astype(np.uint8)
