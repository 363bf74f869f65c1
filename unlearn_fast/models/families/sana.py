"""Sana: a linear-attention DiT (SanaTransformer2DModel) on a deep-compression autoencoder (AutoencoderDC), reading
Gemma tokens through cross-attention with their mask, trained with flow matching; the transformer takes the
scheduler's timestep times its config's timestep_scale (as SanaPipeline calls it)."""
from __future__ import annotations

from ..family import PipelineFamily
from .pipelines import load_pipeline, pipeline_resolution, pipeline_text_side

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


def load(folder: str, index: dict, device) -> dict:
    from diffusers import SanaPipeline

    pipe = load_pipeline(SanaPipeline, folder, index, device,
                         ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"))
    max_tokens = min(MAX_TOKENS, pipe.tokenizer.model_max_length)

    def encode(prompts):
        tokens, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=pipe.device,
                                                clean_caption=False, max_sequence_length=max_tokens,
                                                complex_human_instruction=None)
        return {"tokens": tokens, "mask": mask.float()}

    return {"unet": pipe.transformer, "scheduler": pipe.scheduler, "vae": pipe.vae,
            "resolution": pipeline_resolution(pipe, folder),
            "text": pipeline_text_side(pipe, ("text_encoder",), ("tokenizer",), encode, max_tokens),
            "family": SanaFamily(pipe)}
