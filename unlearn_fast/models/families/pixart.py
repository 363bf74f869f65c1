"""PixArt-Σ: a DiT (PixArtTransformer2DModel) reading T5 tokens through cross-attention with their attention mask,
trained with the DDPM objective. Its transformer predicts ε and a learned variance side by side (2 × channels); the
loss, like the pipeline's sampler, uses the ε half (the variance half has no target in the simple loss)."""
from __future__ import annotations

from ..family import PipelineFamily
from .pipelines import load_pipeline, masked_text_parts

MAX_TOKENS = 300  # PixArtSigmaPipeline's default max_sequence_length


class PixArtFamily(PipelineFamily):
    name = "pixart-sigma"
    # sample at the model's own resolution: binning maps it onto the checkpoints' table of 256-2048 px sizes
    call_options = {"use_resolution_binning": False}

    def call(self, denoiser, x_t, time, record):
        out = denoiser(x_t, encoder_hidden_states=record["tokens"], encoder_attention_mask=record["mask"],
                       timestep=time, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                       return_dict=False)[0]
        return out[:, :x_t.shape[1]] if out.shape[1] == 2 * x_t.shape[1] else out


def load(folder: str, index: dict, device, variant: str | None = None) -> dict:
    from diffusers import PixArtSigmaPipeline

    pipe = load_pipeline(PixArtSigmaPipeline, folder, index, device,
                         ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"), variant)
    return masked_text_parts(pipe, folder, PixArtFamily(pipe), MAX_TOKENS)
