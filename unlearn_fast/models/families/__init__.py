"""The families a model folder may hold, by the pipeline class its model_index.json names. A new family is one
loader file here and one row in FAMILIES; nothing else changes.

    pipeline (_class_name)        loader              denoiser                      objective
    UnlearnFastPipeline           unet.load_sd        UNet2DConditionModel          DDPM ε / v
    UnlearnFastDiTPipeline        tiny_dit.load       PixArtTransformer2DModel      flow matching (ours, tiny)
    StableDiffusionPipeline       unet.load_sd        UNet2DConditionModel          DDPM ε / v
    StableDiffusionXLPipeline     unet.load_sdxl      UNet2DConditionModel          DDPM ε / v
    PixArtSigmaPipeline           pixart.load         PixArtTransformer2DModel      DDPM ε (learned σ dropped)
    SanaPipeline                  sana.load           SanaTransformer2DModel        flow matching
    StableDiffusion3Pipeline      sd3.load            SD3Transformer2DModel         flow matching
    FluxPipeline                  flux.load           FluxTransformer2DModel        flow matching
"""
from __future__ import annotations

import importlib
import os

from ..folder import DEFAULT_MODEL, ModelFolderError, check_variant, read_index

FAMILIES: dict[str, str] = {
    "UnlearnFastPipeline": "unet:load_sd",
    "UnlearnFastDiTPipeline": "tiny_dit:load",
    "StableDiffusionPipeline": "unet:load_sd",
    "StableDiffusionXLPipeline": "unet:load_sdxl",
    "PixArtSigmaPipeline": "pixart:load",
    "SanaPipeline": "sana:load",
    "StableDiffusion3Pipeline": "sd3:load",
    "FluxPipeline": "flux:load",
}


def loader_for(folder: str, index: dict):
    pipeline = index.get("_class_name", "StableDiffusionPipeline")
    if pipeline not in FAMILIES:
        raise ModelFolderError(f"{os.path.join(folder, 'model_index.json')}: pipeline {pipeline!r} is not a supported "
                               f"family (supported: {', '.join(FAMILIES)})")
    module, function = FAMILIES[pipeline].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def load_parts(folder: str = "default", device="cpu", variant: str | None = None) -> tuple[dict, str]:
    """The parts of a model folder (``"default"`` = the shipped tiny emoji model) as DiffusionModel's keyword
    arguments, and the folder's path: one way for every family, folder → the family's loader → DiffusionModel.
    variant: read the weights saved as <name>.<variant>.safetensors ("fp16"), computed in float32."""
    folder = DEFAULT_MODEL if folder == "default" else folder
    index = read_index(folder)
    loader = loader_for(folder, index)
    check_variant(folder, variant)
    return loader(folder, index, device, variant), folder
