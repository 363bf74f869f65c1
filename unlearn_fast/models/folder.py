"""Model folders: the diffusers pipeline layout, for our tiny models and every supported family alike.

    model_index.json          which pipeline and which class each part is (diffusers' format); its _class_name picks
                              the family's loader (models/families/__init__.py)
    unet/ or transformer/, vae/, scheduler/, text_encoder*/, tokenizer*/   diffusers' and transformers' own formats
    training.json             (ours) how the weights were produced: command, settings, data fingerprint, losses

Weights load from safetensors only; diffusers/transformers are asked never to touch the network. A folder saved with
diffusers' ``save_pretrained(..., variant="fp16")`` holds ``<name>.fp16.safetensors``: it is read through the libraries'
own ``from_pretrained(variant=...)`` when that variant is asked for (--variant fp16), and computed in float32 as any
other folder.
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import UserInputError, read_json_file

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "default")


PIPELINES_EXTRA = "pip install 'unlearn_fast[pipelines]' (or: pip install transformers)"


class ModelFolderError(UserInputError):
    """A model folder that cannot be loaded; the message names the folder, the part and what is wrong."""


def _first_lines(error: Exception, limit: int = 2) -> str:
    """A library's multi-line message (e.g. torch's list of size mismatches) as one line: its first `limit` lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    more = f" … ({len(lines) - limit} more)" if len(lines) > limit else ""
    return f"{type(error).__name__}: " + " ".join(lines[:limit])[:400] + more


def read_index(folder: str) -> dict:
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
    return index


def require_parts(folder: str, index: dict, parts) -> None:
    """Every part a family needs is named in model_index.json and present on disk."""
    missing = [part for part in parts if part not in index or not os.path.isdir(os.path.join(folder, part))]
    if missing:
        raise ModelFolderError(f"{folder}: unknown model folder layout: missing part(s) {missing} in model_index.json "
                               f"or on disk (found {sorted(os.listdir(folder))})")


def weight_variants(folder: str) -> dict[str, set]:
    """{part: the variants its safetensors weight files are saved as}, None standing for the plain files:
    ``model.fp16.safetensors`` and ``model-00001-of-00002.fp16.safetensors`` are "fp16", ``model.safetensors`` None."""
    found = {}
    for part in sorted(os.listdir(folder)):
        where = os.path.join(folder, part)
        if os.path.isdir(where):
            names = [name for name in os.listdir(where) if name.endswith(".safetensors")]
            if names:
                found[part] = {name.split(".")[-2] if name.count(".") >= 2 else None for name in names}
    return found


def check_variant(folder: str, variant: str | None) -> None:
    """The weights of `variant` (None: the plain files) are in the folder: a folder of fp16 variants alone, read
    without --variant, would fail deep in diffusers with a message about a missing file."""
    found = weight_variants(folder)
    if variant is None:
        only = {part: sorted(kinds) for part, kinds in found.items() if None not in kinds}
        if only:
            part, kinds = next(iter(only.items()))
            raise ModelFolderError(f"{os.path.join(folder, part)}: holds only {'/'.join(kinds)}-variant weights "
                                   f"(<name>.{kinds[0]}.safetensors); pass --variant {kinds[0]} (Python: "
                                   f"DiffusionModel.load(..., variant={kinds[0]!r}))")
    elif found and not any(variant in kinds for kinds in found.values()):
        saved = sorted({kind or "plain" for kinds in found.values() for kind in kinds})
        raise ModelFolderError(f"{folder}: --variant {variant}: no part holds <name>.{variant}.safetensors weights "
                               f"(its weights are saved as: {', '.join(saved)})")


def weight_options(variant: str | None) -> dict:
    """from_pretrained's keywords for the weights of `variant` (None: the plain files), always computed in float32,
    the engine's dtype: transformers would keep a half-precision file's dtype, plain or variant alike."""
    return {"dtype": torch.float32} if variant is None else {"variant": variant, "dtype": torch.float32}


def library_class(index: dict, part: str) -> tuple[str, str]:
    entry = index.get(part)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        return "", ""
    return str(entry[0]), str(entry[1])


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


def denoiser_part(denoiser) -> str:
    """The denoiser's folder in a model folder and its prefix in a LoRA file: "unet" for a UNet, else "transformer"."""
    return "unet" if type(denoiser).__name__.startswith("UNet") else "transformer"


def save_model_folder(model, folder: str, training_record: dict | None = None) -> None:
    """Write the diffusers pipeline layout; our text side saves as unlearn_fast.WordTextEncoder/WordTokenizer, and a
    family loaded through a diffusers pipeline saves as that pipeline."""
    import diffusers

    os.makedirs(folder, exist_ok=True)
    pipeline = getattr(model.family, "pipeline", None)
    if pipeline is not None:
        pipeline.save_pretrained(folder, safe_serialization=True)
        _write_training_record(folder, training_record)
        return
    denoiser = denoiser_part(model.unet)
    model.unet.save_pretrained(os.path.join(folder, denoiser), safe_serialization=True)
    model.scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    if model.vae is not None:
        model.vae.save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    model.text.encoder.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    model.text.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    text_library = "unlearn_fast" if type(model.text.encoder).__module__.startswith("unlearn_fast") else "transformers"
    index = {
        "_class_name": model.family.saved_as if text_library == "unlearn_fast" else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        denoiser: ["diffusers", type(model.unet).__name__],
        "vae": ["diffusers", type(model.vae).__name__] if model.vae is not None else [None, None],
        "scheduler": ["diffusers", type(model.scheduler).__name__],
        "text_encoder": [text_library, type(model.text.encoder).__name__],
        "tokenizer": [text_library, type(model.text.tokenizer).__name__],
    }
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=2)
    _write_training_record(folder, training_record)


def _write_training_record(folder: str, training_record: dict | None) -> None:
    if training_record is not None:
        with open(os.path.join(folder, "training.json"), "w", encoding="utf-8") as handle:
            json.dump(training_record, handle, indent=2, default=str)
