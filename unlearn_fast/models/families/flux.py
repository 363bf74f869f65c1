"""Flux: an MMDiT (FluxTransformer2DModel) over 2×2-packed latent patches with rotary position ids, reading T5 tokens
through joint attention and the pooled CLIP embedding, trained with flow matching. The transformer takes the time as
σ (timestep / 1000) and, for guidance-distilled checkpoints (config.guidance_embeds), a guidance value; latents are
packed and unpacked around the call as FluxPipeline does, so the loss is over the same (C, h, w) elements."""
from __future__ import annotations

import torch

from ..family import JOINT_ATTENTION_GROUPS, PipelineFamily
from .pipelines import load_pipeline, pipeline_resolution, pipeline_text_side

MAX_TOKENS = 77  # T5 tokens: train_dreambooth_flux.py's --max_sequence_length default (the pipeline's is 512)
TRAINING_GUIDANCE = 3.5  # train_dreambooth_flux.py's --guidance_scale default (models with guidance_embeds)


class FluxFamily(PipelineFamily):
    name = "flux"
    groups = JOINT_ATTENTION_GROUPS

    def __init__(self, pipeline, guidance: float = TRAINING_GUIDANCE):
        super().__init__(pipeline)
        self.guidance = guidance

    def latent_multiple(self, denoiser) -> int:
        return 2 * super().latent_multiple(denoiser)  # latents are packed in 2×2 patches around the call

    def call(self, denoiser, x_t, time, record):
        from diffusers import FluxPipeline

        batch, channels, height, width = x_t.shape
        packed = FluxPipeline._pack_latents(x_t, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x_t.device, x_t.dtype)
        text_ids = torch.zeros(record["tokens"].shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        config = getattr(denoiser, "config", self.pipeline.transformer.config)
        guidance = (torch.full((batch,), self.guidance, device=x_t.device, dtype=torch.float32)
                    if config.guidance_embeds else None)
        out = denoiser(hidden_states=packed, timestep=time / 1000, guidance=guidance,
                       pooled_projections=record["pooled"].to(x_t.dtype), encoder_hidden_states=record["tokens"],
                       txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        # _unpack_latents takes the pixel size: latent size × the VAE factor (its packing factor is 2 of that).
        factor = self.pipeline.vae_scale_factor
        return FluxPipeline._unpack_latents(out, height * factor, width * factor, factor)

    def describe(self):
        return {"family": self.name, "training_guidance": self.guidance}

    def pipeline_latents(self, latents):
        from diffusers import FluxPipeline

        batch, channels, height, width = latents.shape
        return FluxPipeline._pack_latents(latents, batch, channels, height, width)


def load(folder: str, index: dict, device, variant: str | None = None) -> dict:
    from diffusers import FluxPipeline

    pipe = load_pipeline(FluxPipeline, folder, index, device,
                         ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer",
                          "tokenizer_2"), variant)
    max_tokens = min(MAX_TOKENS, pipe.tokenizer_2.model_max_length)

    def encode(prompts):
        tokens, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device=pipe.device, num_images_per_prompt=1,
                                               max_sequence_length=max_tokens)
        return {"tokens": tokens, "pooled": pooled}

    return {"unet": pipe.transformer, "scheduler": pipe.scheduler, "vae": pipe.vae,
            "resolution": pipeline_resolution(pipe, folder),
            "text": pipeline_text_side(pipe, ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2"), encode,
                                       max_tokens),
            "family": FluxFamily(pipe)}
