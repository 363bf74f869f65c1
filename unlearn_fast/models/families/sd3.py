"""Stable Diffusion 3: an MMDiT (SD3Transformer2DModel) whose joint attention reads the text stream (CLIP-L, CLIP-G
and T5 tokens side by side) and the pooled CLIP embeddings, trained with flow matching (shift 3.0 in SD3's
scheduler config); the scripts' default loss weights each row by σ² (their --precondition_outputs)."""
from __future__ import annotations

from ..family import JOINT_ATTENTION_GROUPS, PipelineFamily
from .pipelines import load_pipeline, pipeline_resolution, pipeline_text_side

MAX_TOKENS = 77  # T5 tokens: diffusers' SD3 training scripts' --max_sequence_length default (the pipeline's is 256)


class SD3Family(PipelineFamily):
    """The loss is diffusers' SD3 scripts' default (--precondition_outputs 1): the flow loss weighted by σ²."""

    name = "sd3"
    groups = JOINT_ATTENTION_GROUPS

    def objective(self, scheduler):
        from ..objective import FlowMatchingObjective

        return FlowMatchingObjective(scheduler, weighting="sigma_squared")

    def call(self, denoiser, x_t, time, record):
        return denoiser(hidden_states=x_t, timestep=time, encoder_hidden_states=record["tokens"],
                        pooled_projections=record["pooled"].to(x_t.dtype), return_dict=False)[0]


def load(folder: str, index: dict, device, variant: str | None = None) -> dict:
    from diffusers import StableDiffusion3Pipeline

    pipe = load_pipeline(StableDiffusion3Pipeline, folder, index, device,
                         ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer",
                          "tokenizer_2"), variant)

    def encode(prompts):
        tokens, _, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, prompt_3=None, device=pipe.device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False,
                                                  max_sequence_length=MAX_TOKENS)
        return {"tokens": tokens, "pooled": pooled}

    return {"unet": pipe.transformer, "scheduler": pipe.scheduler, "vae": pipe.vae,
            "resolution": pipeline_resolution(pipe, folder),
            "text": pipeline_text_side(pipe, ("text_encoder", "text_encoder_2", "text_encoder_3"),
                                       ("tokenizer", "tokenizer_2", "tokenizer_3"), encode, MAX_TOKENS),
            "family": SD3Family(pipe)}
