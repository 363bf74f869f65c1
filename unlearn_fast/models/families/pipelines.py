"""Loading a family through its diffusers pipeline class (text encoders through transformers), offline, and the text
side built from the pipeline's own encode_prompt (what diffusers' training scripts call)."""
from __future__ import annotations

import json
import os

from torch import nn

from ..folder import PIPELINES_EXTRA, ModelFolderError, loading, require_parts, weight_options
from ..text_side import TextSide


def load_pipeline(pipeline_class, folder: str, index: dict, device, parts, variant: str | None = None):
    require_parts(folder, index, parts)
    try:
        import transformers  # noqa: F401  (every such family's text encoders are transformers models)
    except ImportError:
        raise ModelFolderError(f"{folder}: a {pipeline_class.__name__} needs transformers: {PIPELINES_EXTRA}") from None
    with loading(folder, "model"):
        pipe = pipeline_class.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                              **weight_options(variant))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_text_side(pipe, encoders, tokenizers, encode, max_tokens: int | None = None) -> TextSide:
    """encode(prompts) → {"tokens": ..., and "pooled" / "mask" where the family has them}."""
    modules = nn.ModuleList([getattr(pipe, name) for name in encoders if getattr(pipe, name, None) is not None])
    tokenizer_list = tuple(getattr(pipe, name) for name in tokenizers if getattr(pipe, name, None) is not None)
    first = tokenizer_list[0]

    def token_counts(prompts):
        return [len(ids) for ids in first(list(prompts), truncation=False).input_ids]

    return TextSide(tokenizer=tokenizer_list, encoder=modules, encode=encode, token_counts=token_counts,
                    max_tokens=max_tokens or first.model_max_length)


def masked_text_parts(pipe, folder: str, family, max_tokens: int, **encode_options) -> dict:
    """The parts of a DiT family that reads one text encoder's per-token states with their attention mask
    (PixArt-Σ, Sana), encoded by the pipeline's encode_prompt with encode_options."""
    max_tokens = min(max_tokens, pipe.tokenizer.model_max_length)

    def encode(prompts):
        tokens, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=pipe.device,
                                                clean_caption=False, max_sequence_length=max_tokens, **encode_options)
        return {"tokens": tokens, "mask": mask.float()}

    return {"unet": pipe.transformer, "scheduler": pipe.scheduler, "vae": pipe.vae,
            "resolution": pipeline_resolution(pipe, folder),
            "text": pipeline_text_side(pipe, ("text_encoder",), ("tokenizer",), encode, max_tokens), "family": family}


def pipeline_resolution(pipe, folder: str) -> int:
    """The image size the model was trained at: training.json's (ours), else the denoiser's sample size, else the
    pipeline's default (× the VAE's factor)."""
    record = os.path.join(folder, "training.json")
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as handle:
            resolution = json.load(handle).get("resolution")
        if resolution:
            return int(resolution)
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    size = getattr(denoiser.config, "sample_size", None) or pipe.default_sample_size
    return int(size if isinstance(size, int) else size[0]) * int(pipe.vae_scale_factor)
