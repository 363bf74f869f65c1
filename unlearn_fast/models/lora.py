"""LoRA adapters on any family's denoiser, through diffusers' PEFT integration (peft does the layers).

The case: a user fine-tuned a LoRA on their own images and asks which of them a generation came from. The adapter
is loaded into the denoiser (`load_lora`: diffusers' load_lora_adapter, the same loader a pipeline's
load_lora_weights calls for the denoiser), its A/B matrices are the parameter group "lora", and the base weights
stay as they were. `add_lora` makes a fresh adapter for training one here; `save_lora` writes diffusers' LoRA file.
"""
from __future__ import annotations

import os

from .folder import ModelFolderError, denoiser_part

LORA_EXTRA = "pip install 'unlearn_fast[lora]' (or: pip install peft)"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _require_peft(where: str) -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ModelFolderError(f"{where}: LoRA adapters need peft: {LORA_EXTRA}") from None


def load_lora(model, path: str) -> None:
    """Load the LoRA at `path` (a diffusers LoRA folder or .safetensors file) into model's denoiser."""
    from safetensors import SafetensorError

    from .finite import DamagedWeightsError, check_file_finite

    _require_peft(path)
    if not os.path.exists(path):
        raise ModelFolderError(f"{path}: no such LoRA file or folder")
    folder, weight = (path, WEIGHT_NAME) if os.path.isdir(path) else os.path.split(path)
    try:
        # Checked before it touches the model: a NaN adapter would make every loss, Fisher and score NaN.
        check_file_finite(os.path.join(folder, weight))
        model.unet.load_lora_adapter(folder, weight_name=weight, prefix=denoiser_part(model.unet),
                                     adapter_name="default", local_files_only=True, use_safetensors=True)
    except DamagedWeightsError:  # a ValueError too, and already one line naming file and tensor
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        raise ModelFolderError(f"{path}: cannot load this LoRA into the {model.family.name} denoiser "
                               f"({type(error).__name__}: {str(error).splitlines()[0][:300]})") from None
    model.lora = os.path.abspath(path)


def add_lora(model, rank: int = 4, targets=DEFAULT_TARGETS, seed: int = 0) -> None:
    """A fresh adapter of `rank` on the attention projections (B starts at zero: the model is unchanged)."""
    import torch
    from peft import LoraConfig

    _require_peft("add_lora")
    torch.manual_seed(seed)
    model.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                      target_modules=list(targets)))
    model.lora = "trained here"


def save_lora(model, folder: str) -> str:
    """diffusers' LoRA file (pytorch_lora_weights.safetensors) of the denoiser's adapter, into `folder`."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model.unet))
    os.makedirs(folder, exist_ok=True)
    # The SD writer prefixes keys with "unet."; load_lora reads that prefix back for a UNet, "transformer." else.
    prefix = denoiser_part(model.unet)
    StableDiffusionPipeline.write_lora_layers({f"{prefix}.{k}": v for k, v in layers.items()}, folder,
                                              is_main_process=True, weight_name=WEIGHT_NAME, save_function=None,
                                              safe_serialization=True)
    return os.path.join(folder, WEIGHT_NAME)
