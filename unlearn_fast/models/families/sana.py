"""Sana: a linear-attention DiT (SanaTransformer2DModel) on a deep-compression autoencoder (AutoencoderDC), reading
Gemma tokens through cross-attention with their mask, trained with flow matching; the transformer takes the
scheduler's timestep times its config's timestep_scale (as SanaPipeline calls it)."""
from __future__ import annotations

from ..family import PipelineFamily
from .pipelines import load_pipeline, masked_text_parts

MAX_TOKENS = 300  # SanaPipeline's default max_sequence_length


class SanaFamily(PipelineFamily):
    """Flow matching whatever sampler the folder ships (Sana's checkpoints ship a flow DPM-Solver): the training
    scheduler is FlowMatchEulerDiscreteScheduler from that config, as diffusers' train_dreambooth_lora_sana.py
    builds it."""

    name = "sana"
    call_options = {"use_resolution_binning": False}  # as PixArt: the model's own resolution

    def objective(self, scheduler):
        from ..objective import FlowMatchingObjective

        return FlowMatchingObjective(scheduler)

    def call(self, denoiser, x_t, time, record):
        scale = getattr(denoiser, "config", self.pipeline.transformer.config).timestep_scale
        return denoiser(x_t, encoder_hidden_states=record["tokens"], encoder_attention_mask=record["mask"],
                        timestep=time * scale, return_dict=False)[0]

    def pipeline_prompts(self, model, prompts, guidance):
        return {"prompt": list(prompts), "complex_human_instruction": None}


def load(folder: str, index: dict, device, variant: str | None = None) -> dict:
    from diffusers import SanaPipeline

    pipe = load_pipeline(SanaPipeline, folder, index, device,
                         ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"), variant)
    return masked_text_parts(pipe, folder, SanaFamily(pipe), MAX_TOKENS, complex_human_instruction=None)
