"""Single-file checkpoints: a Stable Diffusion 1.x/2.x model saved as ONE .safetensors file in the original (LDM)
key layout — model.diffusion_model.*, first_stage_model.*, cond_stage_model.* — as checkpoints are shared outside
diffusers' folder layout.

Read through diffusers' own ``StableDiffusionPipeline.from_single_file(path, config=FOLDER, local_files_only=True)``:
the weights come from the file, converted by diffusers (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, the
CLIP conversions); every config, the tokenizer and the scheduler come from FOLDER (--model-config), a local diffusers
pipeline folder describing the checkpoint (the same model's folder, weights or not). Nothing is downloaded and no
model type is guessed from the file (diffusers would fetch a default config from the hub otherwise).

Safetensors only: a pickle-based file (.ckpt, .bin, .pt...) is refused by its name, before anything is read. The file
must hold all three parts: with one missing, diffusers would silently take that part's weights from FOLDER instead.
"""
from __future__ import annotations

import os
from itertools import chain

from .folder import ModelFolderError, library_class, loading, read_index, require_parts

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
PIPELINE = "StableDiffusionPipeline"
# Each part's tensors in the file, by the prefixes diffusers' conversions read (loaders/single_file_utils.py).
FILE_PARTS = {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.", "vae."),
              "text_encoder": ("cond_stage_model.",)}
CONFIG_PARTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


def is_single_file(path: str) -> bool:
    """`path` names a checkpoint file rather than a model folder: an existing file, or a weights file's name."""
    return os.path.isfile(path) or path.lower().endswith((SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES))


def _how_to_give_config(path: str) -> str:
    return (f"give --model-config FOLDER, a local diffusers pipeline folder whose configs describe it (model_index.json, "
            f"unet/, vae/, text_encoder/, tokenizer/, scheduler/; e.g. the same model's folder) (Python: "
            f"DiffusionModel.load({path!r}, config=FOLDER))")


def check_single_file(path: str, config: str | None) -> None:
    """Everything that can be checked before the weights are read: a one-line ModelFolderError naming the file or
    the config folder otherwise."""
    name = path.lower()
    if name.endswith(PICKLE_SUFFIXES):
        raise ModelFolderError(f"{path}: a pickle-based checkpoint ({os.path.splitext(name)[1]}) is refused: "
                               f"unlearn_fast reads weights from safetensors only (loading a pickle can run code); "
                               f"convert it to {SAFETENSORS_SUFFIX} first")
    if not name.endswith(SAFETENSORS_SUFFIX):
        raise ModelFolderError(f"{path}: neither a model folder nor a {SAFETENSORS_SUFFIX} single-file checkpoint")
    if not os.path.isfile(path):
        raise ModelFolderError(f"{path}: no such file")
    from diffusers import utils as diffusers_utils

    if not diffusers_utils.is_accelerate_available():
        # Without accelerate diffusers loads the file non-strictly into initialised modules: a tensor the file lacks
        # would keep its random value unseen. With it, such a tensor stays empty (meta) and is named below.
        raise ModelFolderError(f"{path}: single-file checkpoints need accelerate (pip install accelerate, or "
                               "'unlearn_fast[pipelines]'), which lets a tensor missing from the file be found")
    if config is None:
        raise ModelFolderError(f"{path} is a single-file checkpoint: {_how_to_give_config(path)}")
    if not os.path.isdir(config):
        raise ModelFolderError(f"--model-config {config}: no such folder; for {path}, {_how_to_give_config(path)}")
    index = read_index(config)
    pipeline = index.get("_class_name")
    if pipeline != PIPELINE:
        raise ModelFolderError(f"--model-config {config}: its model_index.json names {pipeline!r}; single-file "
                               f"checkpoints are read for Stable Diffusion 1.x/2.x ({PIPELINE}) only")
    require_parts(config, index, CONFIG_PARTS)
    library, encoder_class = library_class(index, "text_encoder")
    if (library, encoder_class) != ("transformers", "CLIPTextModel"):
        raise ModelFolderError(f"--model-config {config}: text encoder {library}.{encoder_class}; a Stable Diffusion "
                               "checkpoint's is transformers.CLIPTextModel")
    names = _tensor_names(path)
    for part, prefixes in FILE_PARTS.items():
        if not any(key.startswith(prefixes) for key in names):
            raise ModelFolderError(f"{path}: holds no {part} weights (no tensor named {prefixes[0]}*): not a whole "
                                   "Stable Diffusion checkpoint in the original layout")


def _tensor_names(path: str) -> list[str]:
    """The tensor names in a safetensors file's header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as weights:
            return list(weights.keys())
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) on a damaged header
        raise ModelFolderError(f"{path}: not a readable safetensors file ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200] if str(error) else ''})") from None


def load_single_file(path: str, config: str | None, device) -> dict:
    """The parts of a Stable Diffusion single-file checkpoint (DiffusionModel's keyword arguments), read through
    diffusers' StableDiffusionPipeline.from_single_file with config's configs, tokenizer and scheduler."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from .families.unet import clip_text_side
    from .family import Family

    check_single_file(path, config)
    with loading(path, "model"):
        try:
            # No dtype asked: diffusers casts every tensor to its module's own dtype (float32, the engine's), so a
            # half-precision file is computed in float32 as any other. Parts a checkpoint never holds are left out.
            pipe = StableDiffusionPipeline.from_single_file(
                path, config=os.path.abspath(config), local_files_only=True, safety_checker=None,
                feature_extractor=None, image_encoder=None, requires_safety_checker=False)
        except SingleFileComponentError as error:
            raise ModelFolderError(f"{path}: cannot load it ({str(error).strip().splitlines()[0]})") from None
        except NotImplementedError as error:
            # accelerate builds the modules empty (on the meta device) and diffusers' conversion skips a tensor the
            # file lacks: moving the UNet or the VAE then fails on the one left empty.
            if "meta tensor" not in str(error):
                raise
            raise ModelFolderError(f"{path}: lacks tensors that the architecture --model-config {config} describes "
                                   "(the file is incomplete, or the config is another model's)") from None
    for part in ("unet", "vae", "text_encoder"):  # the text encoder is never moved: its empty tensors are found here
        module = getattr(pipe, part)
        empty = [name for name, tensor in chain(module.named_parameters(), module.named_buffers()) if tensor.is_meta]
        if empty:
            raise ModelFolderError(f"{path}: holds no weights for {part} tensor {empty[0]!r} ({len(empty)} missing): "
                                   f"the file is incomplete, or --model-config {config} is another model's")
    with loading(config, "scheduler"):
        # As for a folder (families/unet.load_sd): whatever scheduler the config names, losses use its DDPM form.
        scheduler = DDPMScheduler.from_pretrained(config, subfolder="scheduler", local_files_only=True)
    return {"unet": pipe.unet.to(device), "scheduler": scheduler, "vae": pipe.vae.to(device),
            "text": clip_text_side(pipe.tokenizer, pipe.text_encoder.to(device).eval()), "family": Family()}
