"""Model folders: the diffusers pipeline layout, for our tiny models and for Stable Diffusion alike.

    model_index.json          which class each part is (diffusers' format)
    unet/  vae/  scheduler/   diffusers' own save format (config + safetensors)
    text_encoder/ tokenizer/  CLIPTextModel + CLIPTokenizer (Stable Diffusion), or WordTextEncoder + WordTokenizer
    training.json             (ours) how the weights were produced: command, settings, data fingerprint, losses

Weights load from safetensors only; diffusers/transformers are asked never to touch the network.
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import UserInputError, read_json_file
from .text_side import TextSide, word_text_side

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "default")
REQUIRED_PARTS = ("unet", "scheduler", "text_encoder", "tokenizer")


PIPELINES_EXTRA = "pip install 'unlearn_fast[pipelines]' (or: pip install transformers)"


class ModelFolderError(UserInputError):
    """A model folder that cannot be loaded; the message names the folder, the part and what is wrong."""


def _first_lines(error: Exception, limit: int = 2) -> str:
    """A library's multi-line message (e.g. torch's list of size mismatches) as one line: its first `limit` lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    more = f" … ({len(lines) - limit} more)" if len(lines) > limit else ""
    return f"{type(error).__name__}: " + " ".join(lines[:limit])[:400] + more


def _read_index(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise ModelFolderError(f"{folder}: no such model folder (expected a diffusers pipeline folder with "
                               "model_index.json, unet/, scheduler/, text_encoder/, tokenizer/ and optionally vae/)")
    path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(path):
        raise ModelFolderError(f"{folder}: not a model folder: model_index.json is missing (expected the diffusers "
                               f"pipeline layout; found {sorted(os.listdir(folder))[:10]})")
    index = read_json_file(path, ModelFolderError)
    if not isinstance(index, dict):
        raise ModelFolderError(f"{path}: expected a JSON object naming each part, got {type(index).__name__}")
    missing = [part for part in REQUIRED_PARTS if part not in index or not os.path.isdir(os.path.join(folder, part))]
    if missing:
        raise ModelFolderError(f"{folder}: unknown model folder layout: missing part(s) {missing} in model_index.json "
                               f"or on disk (found {sorted(os.listdir(folder))})")
    return index


def _library_class(index: dict, part: str) -> tuple[str, str]:
    entry = index.get(part)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        return "", ""
    return str(entry[0]), str(entry[1])


def _load_text_side(folder: str, index: dict, device) -> TextSide:
    library, encoder_class = _library_class(index, "text_encoder")
    if library == "unlearn_fast" and encoder_class == "WordTextEncoder":
        from .text_encoder import WordTextEncoder, WordTokenizer

        with loading(folder, "tokenizer"):
            tokenizer = WordTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        with loading(folder, "text_encoder"):
            encoder = WordTextEncoder.from_pretrained(os.path.join(folder, "text_encoder"), use_safetensors=True,
                                                      low_cpu_mem_usage=False)
        return word_text_side(tokenizer, encoder.to(device).eval())
    if library == "transformers" and encoder_class in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        try:
            import transformers
        except ImportError:
            raise ModelFolderError(f"{folder}: its text encoder is transformers.{encoder_class}, and transformers is "
                                   f"not installed: {PIPELINES_EXTRA}") from None

        tokenizer_library, tokenizer_class = _library_class(index, "tokenizer")
        with loading(folder, "tokenizer"):
            tokenizer = getattr(transformers, tokenizer_class or "CLIPTokenizer").from_pretrained(
                os.path.join(folder, "tokenizer"), local_files_only=True)
        with loading(folder, "text_encoder"):
            encoder = getattr(transformers, encoder_class).from_pretrained(
                os.path.join(folder, "text_encoder"), local_files_only=True, use_safetensors=True).to(device).eval()

        def encode(prompts: list[str]) -> torch.Tensor:
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(encoder.device)
            return encoder(ids)[0]

        def token_counts(prompts: list[str]) -> list[int]:
            return [len(ids) for ids in tokenizer(list(prompts), truncation=False).input_ids]

        return TextSide(tokenizer=tokenizer, encoder=encoder, encode=encode, token_counts=token_counts,
                        max_tokens=tokenizer.model_max_length)
    raise ModelFolderError(f"{folder}: unknown text encoder {library}.{encoder_class} in model_index.json (supported: "
                           "transformers.CLIPTextModel, unlearn_fast.WordTextEncoder)")


def load_parts(folder: str = "default", device="cpu") -> tuple[dict, str]:
    """The parts of a model folder (``"default"`` = the shipped tiny emoji model) as DiffusionModel's keyword
    arguments, and the folder's path (DiffusionModel.load builds the model from them)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = DEFAULT_MODEL if folder == "default" else folder
    index = _read_index(folder)
    with loading(folder, "unet"):
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, local_files_only=True,
                                                     low_cpu_mem_usage=False)
    vae = None
    if _library_class(index, "vae")[1] and os.path.isdir(os.path.join(folder, "vae")):
        with loading(folder, "vae"):
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, local_files_only=True,
                                                low_cpu_mem_usage=False)
    with loading(folder, "scheduler"):
        # Training noise schedule: whatever scheduler class the folder names, losses use its DDPM form.
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    text = _load_text_side(folder, index, device)
    return {"unet": unet.to(device), "scheduler": scheduler, "text": text,
            "vae": vae.to(device) if vae is not None else None}, folder


class loading:
    """Turns a library's failure to load one part (a config that does not match its weights, a missing or corrupt
    file) into a one-line ModelFolderError naming the folder and the part."""

    def __init__(self, folder: str, part: str):
        self.folder, self.part = folder, part

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, (ModelFolderError, KeyboardInterrupt, MemoryError)):
            return False
        if isinstance(error, (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError)):
            where = os.path.join(self.folder, self.part) if self.part != "model" else self.folder
            raise ModelFolderError(f"{where}: cannot load it ({_first_lines(error)})") from None
        return False


def save_model_folder(model, folder: str, training_record: dict | None = None) -> None:
    """Write the diffusers pipeline layout; our text side saves as unlearn_fast.WordTextEncoder/WordTokenizer."""
    import diffusers

    os.makedirs(folder, exist_ok=True)
    model.unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    model.scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    if model.vae is not None:
        model.vae.save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    model.text.encoder.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    model.text.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    text_library = "unlearn_fast" if type(model.text.encoder).__module__.startswith("unlearn_fast") else "transformers"
    index = {
        "_class_name": "UnlearnFastPipeline" if text_library == "unlearn_fast" else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(model.unet).__name__],
        "vae": ["diffusers", type(model.vae).__name__] if model.vae is not None else [None, None],
        "scheduler": ["diffusers", type(model.scheduler).__name__],
        "text_encoder": [text_library, type(model.text.encoder).__name__],
        "tokenizer": [text_library, type(model.text.tokenizer).__name__],
    }
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=2)
    if training_record is not None:
        with open(os.path.join(folder, "training.json"), "w", encoding="utf-8") as handle:
            json.dump(training_record, handle, indent=2, default=str)
