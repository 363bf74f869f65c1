"""UNet families: Stable Diffusion 1.x / 2.x and the shipped tiny model (a UNet read through encoder_hidden_states
alone), and SDXL (two text encoders; the UNet also reads the pooled text embedding and the size/crop time ids).

Loaded part by part, so our own WordTextEncoder stands where Stable Diffusion has CLIP.
"""
from __future__ import annotations

import os

import torch

from ..family import Family, PipelineFamily
from ..folder import PIPELINES_EXTRA, ModelFolderError, library_class, loading, require_parts, weight_options
from ..text_side import TextSide, word_text_side


class SDXLFamily(PipelineFamily):
    """SDXL: tokens are both encoders' penultimate states side by side, plus the second encoder's pooled embedding;
    time ids (original size, crop top-left, target size) are the model's resolution, uncropped, as in diffusers'
    train_text_to_image_sdxl.py for square images that need no crop."""

    name = "sdxl"

    def __init__(self, pipeline, resolution: int):
        super().__init__(pipeline)
        self.resolution = resolution

    def call(self, denoiser, x_t, time, record):
        size = self.resolution
        time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=x_t.dtype, device=x_t.device).expand(len(x_t), 6)
        added = {"text_embeds": record["pooled"].to(x_t.dtype), "time_ids": time_ids}
        return denoiser(x_t, time, encoder_hidden_states=record["tokens"], added_cond_kwargs=added).sample

    def at_resolution(self, resolution: int) -> None:
        self.resolution = resolution

    def describe(self):
        return {"family": self.name, "time_ids": [self.resolution] * 2 + [0, 0] + [self.resolution] * 2}


def load_sd(folder: str, index: dict, device, variant: str | None = None) -> dict:
    """A Stable Diffusion 1.x/2.x folder or one of ours: UNet, optional VAE, the scheduler's DDPM form, the text side;
    variant: the weight files' variant ("fp16"; models/folder.weight_options)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    require_parts(folder, index, ("unet", "scheduler", "text_encoder", "tokenizer"))
    with loading(folder, "unet"):
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, local_files_only=True,
                                                     low_cpu_mem_usage=False, **weight_options(variant))
    vae = None
    if library_class(index, "vae")[1] and os.path.isdir(os.path.join(folder, "vae")):
        with loading(folder, "vae"):
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, local_files_only=True,
                                                low_cpu_mem_usage=False, **weight_options(variant))
    with loading(folder, "scheduler"):
        # Training noise schedule: whatever scheduler class the folder names, losses use its DDPM form.
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    text = _load_text_side(folder, index, device, variant)
    return {"unet": unet.to(device), "scheduler": scheduler, "text": text,
            "vae": vae.to(device) if vae is not None else None, "family": Family()}


def load_sdxl(folder: str, index: dict, device, variant: str | None = None) -> dict:
    from diffusers import StableDiffusionXLPipeline

    from .pipelines import load_pipeline, pipeline_resolution, pipeline_text_side

    pipe = load_pipeline(StableDiffusionXLPipeline, folder, index, device,
                         ("unet", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
                         variant)

    def encode(prompts):
        tokens, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe.unet.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return {"tokens": tokens, "pooled": pooled}

    resolution = pipeline_resolution(pipe, folder)
    return {"unet": pipe.unet, "scheduler": pipe.scheduler, "vae": pipe.vae, "resolution": resolution,
            "text": pipeline_text_side(pipe, ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2"), encode),
            "family": SDXLFamily(pipe, resolution)}


def _load_text_side(folder: str, index: dict, device, variant: str | None = None) -> TextSide:
    library, encoder_class = library_class(index, "text_encoder")
    if library == "unlearn_fast" and encoder_class == "WordTextEncoder":
        from ..text_encoder import WordTextEncoder, WordTokenizer

        with loading(folder, "tokenizer"):
            tokenizer = WordTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        with loading(folder, "text_encoder"):
            encoder = WordTextEncoder.from_pretrained(os.path.join(folder, "text_encoder"), use_safetensors=True,
                                                      low_cpu_mem_usage=False, **weight_options(variant))
        return word_text_side(tokenizer, encoder.to(device).eval())
    if library == "transformers" and encoder_class in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        try:
            import transformers
        except ImportError:
            raise ModelFolderError(f"{folder}: its text encoder is transformers.{encoder_class}, and transformers is "
                                   f"not installed: {PIPELINES_EXTRA}") from None

        tokenizer_library, tokenizer_class = library_class(index, "tokenizer")
        with loading(folder, "tokenizer"):
            tokenizer = getattr(transformers, tokenizer_class or "CLIPTokenizer").from_pretrained(
                os.path.join(folder, "tokenizer"), local_files_only=True)
        with loading(folder, "text_encoder"):
            encoder = getattr(transformers, encoder_class).from_pretrained(
                os.path.join(folder, "text_encoder"), local_files_only=True, use_safetensors=True,
                **weight_options(variant)).to(device).eval()
        return clip_text_side(tokenizer, encoder)
    raise ModelFolderError(f"{folder}: unknown text encoder {library}.{encoder_class} in model_index.json (supported: "
                           "transformers.CLIPTextModel, unlearn_fast.WordTextEncoder)")


def clip_text_side(tokenizer, encoder) -> TextSide:
    """Stable Diffusion's text side: a CLIP tokenizer padding to its model_max_length and the encoder's last hidden
    states, as diffusers' train_text_to_image.py encodes captions (a folder and a single-file checkpoint alike)."""
    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(encoder.device)
        return encoder(ids)[0]

    def token_counts(prompts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(list(prompts), truncation=False).input_ids]

    return TextSide(tokenizer=tokenizer, encoder=encoder, encode=encode, token_counts=token_counts,
                    max_tokens=tokenizer.model_max_length)
